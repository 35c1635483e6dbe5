"""`metasup-mcp` entry point: parse, dispatch, and turn known failures into exit codes.

stdout belongs to the MCP wire when serving over stdio: everything here logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import anyio

from metasup_mcp import __version__
from metasup_mcp.config import Config, ConfigError, check_executables, effective_config, load_config
from metasup_mcp.safety.rules import SafetyRulesError

logger = logging.getLogger("metasup_mcp")

EXIT_CONFIG = 2  # the configuration is wrong: fix servers.yaml
EXIT_REFUSED = 1  # the supervisor cannot start as things are (state folder in use, workspace unrecoverable)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metasup-mcp", description="An MCP server that supervises MCP servers.")
    parser.add_argument("--version", action="version", version=f"metasup-mcp {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="serve MCP (the default command)")
    serve.add_argument("--config", type=Path, default=Path("servers.yaml"))
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)

    check = commands.add_parser("check-config", help="validate servers.yaml and print the effective config")
    check.add_argument("path", type=Path, nargs="?", default=Path("servers.yaml"))

    audit = commands.add_parser("audit", help="the audit log: `audit verify` checks its hash chain")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("--config", type=Path, default=Path("servers.yaml"))
    audit.add_argument("--log", type=Path, help="the audit log (default: <state_dir>/audit.jsonl of --config)")

    demo = commands.add_parser("demo", help="a narrated demonstration in a temporary workspace")
    demo.add_argument("--keep", action="store_true", help="keep the temporary workspace")

    status = commands.add_parser("status", help="show a running supervisor's status (from its status endpoint)")
    status.add_argument("--url", help="the status endpoint (default: status_http of --config, else http://127.0.0.1:9000)")
    status.add_argument("--config", type=Path, default=Path("servers.yaml"))
    status.add_argument("--token", help="the status_http token (default: from --config, or $METASUP_STATUS_TOKEN)")
    status.add_argument("--json", action="store_true", help="print the status JSON instead of a table")

    for verb in ("approve", "reject"):
        decide = commands.add_parser(verb, help=f"{verb} a change waiting for a human (needs the operator token)")
        decide.add_argument("id", help="the proposal id (list_changes, the dashboard)")
        decide.add_argument("--note", default="", help="why; recorded in the audit trail")
        decide.add_argument("--url", help="the status endpoint (default: status_http of --config)")
        decide.add_argument("--config", type=Path, default=Path("servers.yaml"))
        decide.add_argument("--token", help="the status_http token, if it has one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = args.command or "serve"
    try:
        if command == "check-config":
            return check_config(args.path)
        if command == "demo":
            from metasup_mcp.demo import run_demo

            return run_demo(keep=args.keep)
        if command == "audit":
            return audit_verify(args.log or load_config(args.config).supervisor.state_dir / "audit.jsonl")
        if command == "status":
            return status(args)
        if command in ("approve", "reject"):
            return decide(args, approve=command == "approve")
        config_path = getattr(args, "config", Path("servers.yaml"))
        return serve(load_config(config_path), getattr(args, "transport", "stdio"), args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 — a known refusal becomes its message, anything else a traceback
        refusal = _refusal(exc)
        if refusal is None:
            raise
        print(f"metasup-mcp: {refusal}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(refusal, ConfigError | SafetyRulesError) else EXIT_REFUSED


def _refusal(exc: BaseException) -> Exception | None:
    """The refusal a person can act on inside `exc`, which may come wrapped in task-group exception groups."""
    from metasup_mcp.supervisor import ChangeError, SupervisorError

    if isinstance(exc, ConfigError | SafetyRulesError | SupervisorError | ChangeError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _refusal(inner)) is not None:
                return found
    return None


def check_config(path: Path) -> int:
    config = load_config(path)
    for warning in check_executables(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(effective_config(config), indent=2))
    return 0


def audit_verify(log: Path) -> int:
    """Exit 0 when every line of the hash chain checks out, 1 naming the first bad line."""
    from metasup_mcp.safety.audit import verify_audit_log

    verdict = verify_audit_log(log)
    if verdict.ok:
        print(f"{log}: OK, {verdict.entries} entries, hash chain intact")
        return 0
    print(f"{log}: FAILED after {verdict.entries} good entries: {verdict.problem}", file=sys.stderr)
    return 1


def status(args: argparse.Namespace) -> int:
    from metasup_mcp.status_cli import StatusTarget, default_target, run_status

    target = StatusTarget(args.url) if args.url else default_target(args.config)
    if args.token:
        target = StatusTarget(target.url, args.token, target.note)
    return run_status(target, as_json=args.json)


def decide(args: argparse.Namespace, approve: bool) -> int:
    from metasup_mcp.approve_cli import operator_token_for, run_decision
    from metasup_mcp.status_cli import StatusTarget, default_target

    target = StatusTarget(args.url) if args.url else default_target(args.config)
    if args.token:
        target = StatusTarget(target.url, args.token, target.note)
    return run_decision(target, args.id, approve, operator_token_for(args.config), args.note)


def serve(config: Config, transport: str, args: argparse.Namespace) -> int:
    from metasup_mcp.serving import serve_http, serve_stdio

    runner = serve_stdio if transport == "stdio" else serve_http
    anyio.run(_until_signalled, runner, config, args)
    return 0


async def _until_signalled(runner, config: Config, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """Run until the transport ends (stdin closed) or SIGTERM/SIGINT; either way children stop."""
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("received %s: stopping every child, then exiting", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        await runner(config, args)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
