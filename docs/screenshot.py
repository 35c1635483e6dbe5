"""Regenerate docs/dashboard.png: the dashboard of a real supervisor, taken by headless Chromium.

    .venv/bin/python docs/screenshot.py [--out docs/dashboard.png]

It runs a supervisor in a temporary folder over the example servers (notes, textkit) plus one
server that cannot start, proposes three real changes (one applied, one that breaks textkit
and is rolled back, one to a protected path that is rejected), then screenshots the page.
Nothing in the picture is made up. Needs `chromium` (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import anyio

from metasup_mcp.children.state import ChildState
from metasup_mcp.config import parse_config
from metasup_mcp.evolution.pipeline import ChangeRequest
from metasup_mcp.http_status import run_status_http
from metasup_mcp.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "metasup_mcp" / "examples"
WINDOW = "1280,900"

CONFIG = """\
supervisor:
  workspace: workspace
  workspace_template: {examples}
  state_dir: state
  min_runtime: 2s
  max_failures: 50
  health_checks: {{interval: 500ms, probe_timeout: 2s}}
  restart: {{backoff_initial: 300ms, max_restarts: 2, restart_window: 60s}}
  status_http: {{host: 127.0.0.1, port: 0}}
  mcp_servers:
    - {{name: notes, command: python, args: [-u, notes.py], watch: [notes.py]}}
    - {{name: textkit, command: python, args: [-u, textkit.py], watch: [textkit.py]}}
    - name: reports
      command: python
      args: [-c, "import sys; print('reports: REPORTS_DB is not set', file=sys.stderr); sys.exit(2)"]
      watch: [reports/]
"""


async def scenario(supervisor: Supervisor) -> None:
    """Three real proposals through the safety loop; each waits for its own verdict."""
    textkit = (supervisor.settings.workspace / "textkit.py").read_text()
    requests = [
        ChangeRequest(
            title="Document textkit's word counting",
            steps=["Add a module comment", "Restart textkit and verify it"],
            changes=[{"path": "textkit.py", "content": "# Word counts split on whitespace.\n" + textkit}],
        ),
        ChangeRequest(
            title="Load textkit settings at start-up",
            steps=["Read settings.json before serving"],
            changes=[{"path": "textkit.py", "content": "import sys\nsys.exit('settings.json not found')\n"}],
        ),
        ChangeRequest(title="Add a slugify tool", changes=[{"path": "textkit.py", "content": "def slugify(text:\n"}]),
        ChangeRequest(title="Raise max_failures", changes=[{"path": "servers.yaml", "content": "supervisor: {}\n"}]),
    ]
    for request in requests:
        proposal = await supervisor.propose_change(request)
        print(f"  {request.title}: {proposal.verdict or proposal.status}", file=sys.stderr)


async def settle(supervisor: Supervisor) -> None:
    done = (ChildState.RUNNING, ChildState.FATAL, ChildState.EXITED)
    for child in supervisor.manager:
        await child.wait_for(lambda c: c.state in done, 30)


async def screenshot(url: str, out: Path, profile: Path) -> None:
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=3000", f"--window-size={WINDOW}",
        f"--screenshot={out}", url,
    ]
    with anyio.fail_after(60):
        result = await anyio.run_process(command, check=False)  # its stderr is dbus noise unless it fails
    if result.returncode != 0:
        raise SystemExit(f"chromium failed ({result.returncode}):\n{result.stderr.decode(errors='replace')[-3000:]}")


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="metasup-screenshot-") as tmp:
        folder = Path(tmp)
        config = parse_config(CONFIG.format(examples=EXAMPLES), source=folder / "servers.yaml")
        supervisor = Supervisor(config)
        async with supervisor.running(), anyio.create_task_group() as tg:
            url = await tg.start(run_status_http, supervisor, config.supervisor.status_http)
            if url is None:
                raise SystemExit("the status endpoint did not start; see the log above")
            await settle(supervisor)
            await scenario(supervisor)
            await settle(supervisor)
            await screenshot(f"{url}/", out.resolve(), folder / "profile")
            tg.cancel_scope.cancel()
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(main, parser.parse_args().out)
