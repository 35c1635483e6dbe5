"""An agent's request for a server to be added or changed (`propose_server`), kept until an
operator decides.

The config file is operator-owned: an agent never edits it. Its request is validated (the
config with the entry in it must load), stored in `<state_dir>/server_requests/<id>.json` as
`pending_approval`, and audited. Only the operator (`approve_server` / `reject_server` with the
operator token) can let it in: the entry is then written into the config file (comments kept)
and applied by the same reload transaction as `reload_config`; a rolled-back reload puts the
file back as it was, so the file always says what runs.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metasup_mcp.config import ConfigError
from metasup_mcp.config_edit import ConfigDocument, write_atomically
from metasup_mcp.reload import ReloadRefused, check_operator_token

if TYPE_CHECKING:
    from metasup_mcp.supervisor import Supervisor


class ServerRequests:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.folder = supervisor.settings.state_dir / "server_requests"

    def propose(self, entry: dict[str, Any], reason: str, proposer: str | None = None) -> dict[str, Any]:
        """Validate and store the request; `ReloadRefused` naming what is wrong with it.
        `proposer` is the asking connection's identity: that session can never approve it."""
        document = self._document()
        action = "changed" if document.entry(entry["name"]) is not None else "added"
        document.add_server(entry, replace=True)
        try:
            document.validate()
        except ConfigError as exc:
            raise ReloadRefused(f"the server entry is not valid: {'; '.join(exc.problems)}") from None
        request = {
            "id": f"s-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}",
            "status": "pending_approval", "action": action, "entry": entry, "reason": reason,
            "created_at": time.time(), "proposer": proposer,
            "how_to_approve": "an operator calls approve_server(id, token) (or reject_server)",
        }
        self._save(request)
        self.sup.audit_event("server_proposed", id=request["id"], action=action, name=entry["name"], reason=reason)
        return request

    def get(self, request_id: str) -> dict[str, Any]:
        path = self.folder / f"{Path(request_id).name}.json"
        if not path.is_file():
            raise ReloadRefused(f"no server request {request_id!r}; list_changes does not show these: see the audit log")
        return json.loads(path.read_text(encoding="utf-8"))

    async def approve(self, request_id: str, token: str, note: str, who: str | None) -> dict[str, Any]:
        """Write the entry into the config and reload; the file is restored if the reload rolls back.

        As for approve_change: the operator token, never the proposing session (`who`), and never a
        connection without an identity (a stateless one could be the proposer)."""
        check_operator_token(self.sup.operator_gate, token)
        request = self._pending(request_id)
        if who is None:
            raise ReloadRefused(f"cannot approve {request_id} from a stateless connection: approve it from a stdio "
                                "or 2025-11-25 session")
        if who == request.get("proposer"):
            raise ReloadRefused(f"cannot approve {request_id}: this session proposed it; approve it from another session")
        # Claimed before the first await: a second approval meanwhile would take the file with the
        # entry in it as "before", and write that back after a rollback.
        self._save({**request, "status": "approving"})
        try:
            document = self._document()
            before = document.path.read_text(encoding="utf-8")
            document.add_server(request["entry"], replace=True)
            try:
                document.save()
            except ConfigError as exc:  # the file changed since the request was made
                raise ReloadRefused(f"the config with this server no longer validates: {'; '.join(exc.problems)}") from None
            result = await self.sup.reload_config(trigger=f"approve_server:{request_id}")
        except BaseException:
            self._save(request)  # still pending: nothing was decided
            raise
        if result["verdict"] == "rolled_back":
            write_atomically(document.path, before)
        request.update(status=result["verdict"], note=note, decided_at=time.time(), reload=result)
        self._save(request)
        self.sup.audit_event("server_decided", id=request_id, decision="approved", verdict=result["verdict"], note=note)
        return request

    def reject(self, request_id: str, token: str, note: str) -> dict[str, Any]:
        check_operator_token(self.sup.operator_gate, token)
        request = self._pending(request_id)
        request.update(status="rejected", note=note, decided_at=time.time())
        self._save(request)
        self.sup.audit_event("server_decided", id=request_id, decision="rejected", note=note)
        return request

    def _pending(self, request_id: str) -> dict[str, Any]:
        request = self.get(request_id)
        if request["status"] == "approving":
            raise ReloadRefused(f"server request {request_id} is being approved already; see the audit log for the outcome")
        if request["status"] != "pending_approval":
            raise ReloadRefused(f"server request {request_id} is already {request['status']}")
        timeout = self.sup.settings.approval.timeout
        if time.time() > float(request.get("created_at", 0)) + timeout:  # as a held change expires
            request.update(status="expired", decided_at=time.time())
            self._save(request)
            self.sup.audit_event("server_decided", id=request_id, decision="expired")
            raise ReloadRefused(f"server request {request_id} expired: it was not decided within approval.timeout "
                                f"({timeout:g}s); the agent must propose it again")
        return request

    def _document(self) -> ConfigDocument:
        if self.sup.config.source is None:
            raise ReloadRefused("this supervisor was not started from a config file: it cannot take server requests")
        return ConfigDocument.load(self.sup.config.source)

    def _save(self, request: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.folder / f"{request['id']}.json", json.dumps(request, indent=2, default=str))
