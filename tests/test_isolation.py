"""Attacking children, one per kind, each held: by the kernel (bubblewrap) where it runs, by
detection (the integrity guard) where it does not. Status shows what is in force."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from metasup_mcp.children.sandbox import PACKAGE_DIR, bwrap_problem
from metasup_mcp.children.state import ChildState
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.supervisor import Supervisor
from tests.conftest import ROOT, ConfigMaker, eventually
from tests.safety_support import app_config

pytestmark = pytest.mark.anyio

ATTACKER = ROOT / "tests" / "fixtures" / "attacker.py"
SECRET = "sk-live-4f9a1c0e77b2d3aa"
needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no kernel sandbox here: {bwrap_problem()}")


def attacker(name: str, *attacks: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "command": "python", "args": ["-u", str(ATTACKER), *attacks, "--"], **fields}


def outcomes(sup: Supervisor, name: str) -> dict[str, str]:
    """`{"write <path>": "held ..." | "DONE ..."}` from the attacker's report on stderr."""
    found = {}
    for line in sup.server_logs(name, 200):
        if line.startswith("attack "):
            what, _, result = line.removeprefix("attack ").partition(": ")
            found[what] = result
    return found


async def running(sup: Supervisor, name: str) -> None:
    assert await sup.child(name).wait_for(lambda c: c.state is ChildState.RUNNING, 15), sup.server_status(sup.child(name))


def targets(tmp_path: Path, workspace: str = "workspace", state: Path | None = None) -> dict[str, Path]:
    state = state or tmp_path / "state"
    return {
        "git_config": tmp_path / workspace / ".git" / "config",
        "config": tmp_path / "servers.yaml",
        "audit": state / "audit.jsonl",
        "journal": state / "journal.json",
        "package": PACKAGE_DIR / "attack-probe.txt",
    }


@needs_bwrap
@pytest.mark.parametrize("workspace", ["workspace", "."], ids=["config beside the workspace", "config inside it"])
async def test_the_kernel_holds_every_write_to_what_the_supervisor_trusts(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any, workspace: str
) -> None:
    # The state folder always lies outside the workspace.
    state = tmp_path / "state" if workspace == "workspace" else tmp_path.with_name(tmp_path.name + "-state")
    paths = targets(tmp_path, workspace, state)
    attacks = [arg for path in paths.values() for arg in ("--write", str(path))]
    attacks += ["--read", str(state / "audit.jsonl.key")]
    config = make_config(tmp_path, [attacker("evil", *attacks)], workspace=workspace, state_dir=str(state))
    try:
        async with supervisor_factory(config) as sup:
            before = {name: path.read_bytes() for name, path in paths.items() if path.exists()}
            await running(sup, "evil")
            seen = outcomes(sup, "evil")
            assert len(seen) == len(paths) + 1, seen
            assert all(result.startswith("held") for result in seen.values()), seen
            assert {name: path.read_bytes() for name, path in paths.items() if path.exists()} == before
            assert not paths["package"].exists()
            # The state folder is not even visible: the key cannot be read, the journal not written.
            assert "No such file" in seen[f"read {state / 'audit.jsonl.key'}"]

            block = sup.status()["supervisor"]["sandbox"]
            assert block["in_force"] == "bwrap" and block["kernel_enforced"] and block["pid_namespace"]
            assert str(paths["git_config"].parent) in block["readonly"] and str(paths["config"]) in block["readonly"]
            assert str(state) in block["hidden"]
            assert sup.status()["servers"]["evil"]["sandbox"] == "bwrap"
            assert sup.integrity_check() is None
    finally:
        paths["package"].unlink(missing_ok=True)


async def test_without_a_sandbox_detection_catches_the_edits_and_holds_changes_until_recover(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any
) -> None:
    paths = targets(tmp_path)
    attacks = ["--write", str(paths["git_config"]), "--write", str(paths["config"]), "--write", str(paths["audit"])]
    config = make_config(tmp_path, [attacker("evil", *attacks, enabled=False)], sandbox="off")
    async with supervisor_factory(config, autostart=False) as sup:
        assert sup.status()["supervisor"]["sandbox"]["in_force"] == "reaper"
        assert sup.integrity_check() is None
        await sup.start_server("evil")
        await running(sup, "evil")
        assert all(result.startswith("DONE") for result in outcomes(sup, "evil").values())

        refusal = sup.integrity_check()
        assert refusal is not None and "recover" in refusal
        for path in (paths["git_config"], paths["config"], paths["audit"]):
            assert str(path) in refusal
        assert sup.status()["supervisor"]["tamper"]
        assert any(event["event"] == "tamper" for event in sup.events)

        proposal = await sup.propose_change(ChangeRequest("harmless", changes=[{"path": "x.txt", "content": "x"}]))
        assert proposal.verdict == "rejected" and any("behind the supervisor's back" in r for r in proposal.reasons)

        # The audit log itself now fails verification: a line was appended by someone else.
        from metasup_mcp.safety.audit import verify_audit_log

        assert not verify_audit_log(paths["audit"]).ok

        await sup.stop_server("evil")
        await sup.recover()  # the operator has looked (and recover leaves the disabled attacker stopped)
        assert sup.integrity_check() is None and sup.status()["supervisor"]["tamper"] is None
        audited = [json.loads(line)["event"] for line in paths["audit"].read_text().splitlines() if line.startswith("{")]
        assert "tamper" in audited


async def test_without_a_sandbox_the_next_git_call_finds_an_edited_git_config(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any
) -> None:
    paths = targets(tmp_path)
    config = make_config(tmp_path, [attacker("evil", "--write", str(paths["git_config"]), enabled=False)], sandbox="off")
    async with supervisor_factory(config, autostart=False) as sup:
        await sup.start_server("evil")
        await running(sup, "evil")
        assert sup.status()["supervisor"]["tamper"] is None  # nothing has looked yet
        assert sup.changes.workspace is not None
        sup.changes.workspace.head()  # any git call of the supervisor's looks first
        tamper = sup.status()["supervisor"]["tamper"]
        assert tamper and str(paths["git_config"]) in tamper[0]
        assert any(event["event"] == "tamper" for event in sup.events)
        await sup.stop_server("evil")


async def test_a_secret_a_child_prints_is_redacted_in_logs_proposals_and_the_audit_log(
    tmp_path: Path, make_config: ConfigMaker, supervisor_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_TEST_API_KEY", SECRET)
    leaky = attacker("leaky", "--print-env", "MY_API_KEY", env={"MY_API_KEY": "${METASUP_TEST_API_KEY}"})
    config = app_config(make_config, tmp_path, extra_servers=[leaky])
    async with supervisor_factory(config) as sup:
        await running(sup, "leaky")
        await eventually(lambda: any("my MY_API_KEY" in line for line in sup.server_logs("leaky")), 5)
        assert "my MY_API_KEY is [redacted:" in "\n".join(sup.server_logs("leaky"))
        # A change whose server prints the secret and dies: its evidence lands in the proposal and the audit.
        half = len(SECRET) // 2  # the change's code holds the secret in two halves, its output whole
        crashing = f"import sys\nprint('key=' + {SECRET[:half]!r} + {SECRET[half:]!r}, file=sys.stderr)\nsys.exit(3)\n"
        proposal = await sup.propose_change(ChangeRequest("leak", changes=[{"path": "server.py", "content": crashing}]))
        assert proposal.verdict == "rolled_back"
        stored = json.dumps(sup.list_changes()) + (tmp_path / "state" / "audit.jsonl").read_text()
        stored += "\n".join(sup.server_logs("leaky")) + "\n".join(sup.server_logs("app"))
        stored += json.dumps(sup.events, default=str)
        assert SECRET not in stored
        for path in (tmp_path / "state").rglob("*"):
            if path.is_file() and not path.name.endswith(".key"):
                assert SECRET.encode() not in path.read_bytes(), path
