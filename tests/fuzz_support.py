"""A fixed-seed fuzz of the safety loop over a user's own repository (issue: nothing is lost).

The workspace holds tracked, modified, untracked, ignored and data files. Random steps:
proposals (good, breaking at import, touching .gitignore, deleting, writing ignored paths),
on-disk edits by the user and by a child (with a restart), rollbacks, supervisor restarts
and SIGKILLs mid-change. After every step:

- every version of every user file that existed before a supervisor action is on disk, or
  in a commit some ref reaches (`git restore --source=<ref> -- <path>` gets it back);
- the state folder is intact and `audit verify` passes;
- last good is the initial commit or a commit the audit log records as verified.

Used by tests/test_safety_fuzz.py (a CI slice) and bench/safety_fuzz.py (--soak: 200 steps).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import FAULT_ENV, ChangeRequest
from metasup_mcp.evolution.service import ChangeError
from metasup_mcp.safety.audit import verify_audit_log
from metasup_mcp.supervisor import Supervisor
from tests.ownership_support import user_git, user_repo
from tests.safety_support import with_version

RunSupervisor = Callable[[Path], AbstractAsyncContextManager[Supervisor]]
KillMidChange = Callable[[Path, str, list[dict[str, Any]]], Any]
FAULT_STEPS = ["snapshot", "written", "committed", "checked", "restarting", "accepted"]
USER_FILES = ["README.md", "TODO.txt", ".env", "data/local.db", "notes/idea.md", "state.json"]
ACTIONS = {  # action → weight
    "propose_good": 4, "propose_broken": 3, "propose_gitignore": 2, "propose_delete": 1, "propose_ignored": 2,
    "user_edit": 5, "child_edit": 2, "rollback": 2, "restart": 1, "sigkill": 1,
}


async def kill_mid_change(config: Path, step: str, changes: list[dict[str, Any]]) -> None:
    """A `metasup-mcp serve` over `config` that SIGKILLs itself at pipeline `step` of a change."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "metasup_mcp.cli", "--log-level", "ERROR", "serve", "--config", str(config)],
        env={**os.environ, FAULT_ENV: step},
    )
    with anyio.fail_after(90):
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                await session.call_tool("propose_change", {"title": f"die at {step}", "changes": changes})
        except Exception:  # noqa: BLE001 — the supervisor died mid-call: the connection closes
            return


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FuzzReport:
    steps: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    versions_checked: int = 0
    seconds: float = 0.0


class SafetyFuzz:
    def __init__(self, tmp_path: Path, write_config: Callable[[Path, Path], Path], run: RunSupervisor,
                 kill_mid_change: KillMidChange, seed: int) -> None:
        self.rng = random.Random(seed)
        self.repo = user_repo(tmp_path)
        (self.repo / "lib.txt").write_text("a tracked file a change may delete\n")
        user_git(self.repo, "add", "lib.txt")
        user_git(self.repo, "commit", "-qm", "lib")
        self.config = write_config(tmp_path, self.repo)
        self.state = tmp_path / "state"
        self.run, self.kill_mid_change = run, kill_mid_change
        self.versions: dict[str, set[bytes]] = {}
        self.report = FuzzReport()
        self.counter = 0
        self.log: list[str] = []  # what each step did, for a failure's message
        self._record_user_files()

    def _record_user_files(self) -> None:
        for rel in USER_FILES:
            path = self.repo / rel
            if path.is_file():
                self.versions.setdefault(rel, set()).add(path.read_bytes())

    async def run_steps(self, steps: int) -> FuzzReport:
        started = time.monotonic()
        names, weights = zip(*ACTIONS.items(), strict=True)
        done = 0
        while done < steps:
            async with self.run(self.config) as sup:
                await self._settled(sup)
                while done < steps:
                    action = self.rng.choices(names, weights)[0]
                    self.log.append(action)
                    done += 1
                    self.report.actions[action] += 1
                    if action in ("restart", "sigkill"):
                        break
                    await self._step(sup, action)
                    await self._settled(sup)
                    self.check()
            if action == "sigkill" and done <= steps:
                await self.kill_mid_change(self.config, self.rng.choice(FAULT_STEPS), self._server_change(good=True))
            self.check()
        self.report.steps = done
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report

    # -- actions ----------------------------------------------------------------------

    def _server_change(self, good: bool) -> list[dict[str, Any]]:
        self.counter += 1
        content = with_version(f"v{self.counter}") if good else with_version(f"v{self.counter}", "raise SystemExit('broken at import')")
        return [{"path": "server.py", "content": content}]

    async def _step(self, sup: Supervisor, action: str) -> None:
        rng = self.rng
        if action == "user_edit":
            rel = rng.choice(USER_FILES)
            self.log[-1] += f" {rel}"
            path = self.repo / rel
            if path.is_file():  # the user replacing their own bytes is no loss to account for
                self.versions.get(rel, set()).discard(path.read_bytes())
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"user version {rng.random()}\n".encode())
            self._record_user_files()
            return
        if action == "child_edit":
            (self.repo / "server.py").write_text(with_version(f"disk{self.counter}") if rng.random() < 0.6 else "raise SystemExit(4)\n")
            self.counter += 1
            await sup.restart_server("app")
            return
        if action == "rollback":
            target = rng.choice(["previous", "last_good"])
            try:
                done = await sup.rollback(target, reason="fuzz")
                self.log[-1] += f" {target}: {done.get('paths')} {done.get('branch')}"
            except ChangeError:
                self.log[-1] += f" {target}: refused"
            return
        changes = {
            "propose_good": lambda: self._server_change(True),
            "propose_broken": lambda: self._server_change(False),
            "propose_gitignore": lambda: [rng.choice([{"path": ".gitignore", "delete": True},
                                                      {"path": ".gitignore", "content": "!/.env\n"}]),
                                          *self._server_change(rng.random() < 0.5)],
            "propose_delete": lambda: [{"path": "lib.txt", "delete": True} if (self.repo / "lib.txt").exists()
                                       else {"path": "lib.txt", "content": "back\n"}, *self._server_change(rng.random() < 0.5)],
            "propose_ignored": lambda: [rng.choice([{"path": ".env", "content": "SECRET=agent\n"},
                                                    {"path": "data/local.db", "content": "agent rows\n"}]),
                                        *self._server_change(rng.random() < 0.5)],
        }[action]()
        try:
            proposal = await sup.propose_change(ChangeRequest(title=action, changes=changes))
            self.report.verdicts[proposal.verdict or "none"] += 1
            self.log[-1] += f" {[c['path'] for c in changes]} -> {proposal.verdict} {proposal.trigger or ''}"
        except ChangeError:
            self.report.verdicts["error"] += 1

    async def _settled(self, sup: Supervisor) -> None:
        """The app past its start (running or given up) and no on-disk trial pending."""
        child = sup.child("app")
        await child.wait_for(lambda c: c.state in (ChildState.RUNNING, ChildState.FATAL, ChildState.BACKOFF), 30)
        with anyio.move_on_after(10):
            while sup.changes.guard is not None and sup.changes.guard.trial is not None:
                await anyio.sleep(0.05)

    # -- invariants -------------------------------------------------------------------

    def check(self) -> None:
        known = self._blobs_in_refs()
        for rel, versions in self.versions.items():
            on_disk = (self.repo / rel).read_bytes() if (self.repo / rel).is_file() else None
            for data in versions:
                self.report.versions_checked += 1
                assert data == on_disk or _blob(data) in known, (
                    f"lost a version of {rel}: {data[:60]!r}; steps so far:\n  " + "\n  ".join(self.log)
                )
        audit = verify_audit_log(self.state / "audit.jsonl")
        assert audit.ok, audit
        last_good = user_git(self.repo, "rev-parse", "refs/metasup/last-good")
        assert last_good in self._verified(), f"last good {last_good} was never verified; steps:\n  " + "\n  ".join(self.log)

    def _blobs_in_refs(self) -> set[str]:
        out = user_git(self.repo, "log", "--all", "--format=", "--raw", "--no-abbrev", "--no-renames", "-m", "--",
                       *USER_FILES)
        blobs = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5 and line.startswith(":"):
                blobs.update(parts[2:4])
        root = user_git(self.repo, "rev-list", "--max-parents=0", "--all").split()
        for commit in root:  # a first commit's files show in no diff
            for rel in USER_FILES:
                sha = user_git(self.repo, "rev-parse", f"{commit}:{rel}", check=False)
                if sha:
                    blobs.add(sha)
        return blobs

    def _verified(self) -> set[str]:
        verified = set(user_git(self.repo, "rev-list", "--max-parents=0", "--all").split())
        with open(self.state / "audit.jsonl", encoding="utf-8") as f:
            for n, line in enumerate(f):
                event, data = json.loads(line)["event"], json.loads(line)["data"]
                if n == 0 and event == "start":
                    verified.add(data["head"])  # the workspace as first opened: the first last good
                if event in ("accepted", "candidate_accepted", "recovered") and data.get("commit"):
                    verified.add(data["commit"])
        return verified
