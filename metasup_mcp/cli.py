"""`metasup-mcp` entry point: parse, dispatch to `metasup_mcp.commands`, turn known failures into exit codes.

stdout belongs to the MCP wire when serving over stdio: everything here logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from metasup_mcp import __version__
from metasup_mcp.commands import EXIT_CONFIG, EXIT_REFUSED
from metasup_mcp.config import ConfigError, load_config
from metasup_mcp.safety.rules import SafetyRulesError

__all__ = ["EXIT_CONFIG", "EXIT_REFUSED", "main"]

logger = logging.getLogger("metasup_mcp")
_CONFIG = Path("servers.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metasup-mcp", description="An MCP server that supervises MCP servers.")
    parser.add_argument("--version", action="version", version=f"metasup-mcp {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser(
        "serve", help="serve MCP (the default command)", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    serve.add_argument("--config", type=Path, default=_CONFIG,
                       help="the servers.yaml to supervise (relative paths in it are relative to the file)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                       help="stdio for a client that starts this process; http serves streamable HTTP at /mcp")
    serve.add_argument("--host", default="127.0.0.1", help="with --transport http: the address to bind (loopback only)")
    serve.add_argument("--port", type=int, default=8765, help="with --transport http: the port to bind")

    check = commands.add_parser("check-config", help="validate servers.yaml and print the effective config")
    check.add_argument("path", type=Path, nargs="?", default=_CONFIG)

    init = commands.add_parser("init", help="write a commented servers.yaml and prepare the workspace")
    init.add_argument("directory", type=Path, nargs="?", default=Path("."), help="where servers.yaml and state/ go")
    init.add_argument("--workspace", type=Path, help="an existing folder or repository to supervise (default: DIR/workspace)")
    init.add_argument("--force", action="store_true", help="overwrite an existing servers.yaml")

    add = commands.add_parser(
        "add", help="add a server to servers.yaml: add NAME -- COMMAND [ARGS...] or add NAME --url URL",
        usage="metasup-mcp add NAME [--config PATH] [--env K=V]... [--watch GLOB]... -- COMMAND [ARGS...]\n"
        "       metasup-mcp add NAME [--config PATH] --url URL [--header K=V]...",
    )
    add.add_argument("name")
    add.add_argument("--config", type=Path, default=_CONFIG)
    add.add_argument("--env", action="append", default=[], metavar="K=V", help="environment for the child (repeatable)")
    add.add_argument("--watch", action="append", default=[], metavar="GLOB", help="paths whose changes restart it (repeatable)")
    add.add_argument("--url", help="a remote server's streamable HTTP endpoint instead of a command")
    add.add_argument("--header", action="append", default=[], metavar="K=V", help="HTTP header for --url (repeatable; ${VAR} allowed)")
    add.add_argument("--replace", action="store_true", help="replace a server of the same name")

    remove = commands.add_parser("remove", help="remove a server from servers.yaml")
    remove.add_argument("name")
    remove.add_argument("--config", type=Path, default=_CONFIG)

    claude = commands.add_parser("import-claude-config", help="Claude Desktop's mcpServers as servers.yaml entries")
    claude.add_argument("file", type=Path, nargs="?", help="default: this platform's claude_desktop_config.json")
    claude.add_argument("--config", type=Path, default=_CONFIG)
    claude.add_argument("--merge", action="store_true", help="add them to --config instead of printing them")
    claude.add_argument("--print-client-config", action="store_true", help="print the one mcpServers entry that replaces them")

    reload = commands.add_parser("reload", help="make the running supervisor reload its config (SIGHUP) and print the outcome")
    reload.add_argument("--config", type=Path, default=_CONFIG)
    reload.add_argument("--wait", type=float, default=120.0, metavar="SECONDS", help="how long to wait for the outcome")

    audit = commands.add_parser("audit", help="the audit log: `audit verify` checks its hash chain")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("--config", type=Path, default=_CONFIG)
    audit.add_argument("--log", type=Path, help="the audit log (default: <state_dir>/audit.jsonl of --config)")

    demo = commands.add_parser("demo", help="a narrated demonstration in a temporary workspace")
    demo.add_argument("--keep", action="store_true", help="keep the temporary workspace")

    status = commands.add_parser("status", help="show a running supervisor's status (from its status endpoint)")
    status.add_argument("--url", help="the status endpoint (default: status_http of --config, else http://127.0.0.1:9000)")
    status.add_argument("--config", type=Path, default=_CONFIG,
                        help="whose supervisor to ask (its status_http); a different one answering is an error")
    status.add_argument("--token", help="the status_http token (default: from --config, or $METASUP_STATUS_TOKEN)")
    status.add_argument("--json", action="store_true", help="print the status JSON instead of a table")

    for verb in ("approve", "reject"):
        decide = commands.add_parser(verb, help=f"{verb} a change waiting for a human (needs the operator token)")
        decide.add_argument("id", help="the proposal id (list_changes, the dashboard)")
        decide.add_argument("--note", default="", help="why; recorded in the audit trail")
        decide.add_argument("--url", help="the status endpoint (default: status_http of --config)")
        decide.add_argument("--config", type=Path, default=_CONFIG)
        decide.add_argument("--token", help="the status_http token, if it has one")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command or "serve"
    if command == "check-config":
        from metasup_mcp.commands.check_config import check_config

        return check_config(args.path)
    if command == "init":
        from metasup_mcp.commands.init import init

        return init(args.directory, args.workspace, args.force)
    if command == "add":
        from metasup_mcp.commands.servers import add, server_entry

        entry = server_entry(
            args.name, args.server_command, url=args.url, env=args.env, headers=args.header, watch=args.watch
        )
        return add(args.config, entry, replace=args.replace)
    if command == "remove":
        from metasup_mcp.commands.servers import remove

        return remove(args.config, args.name)
    if command == "import-claude-config":
        from metasup_mcp.commands.import_claude import import_claude_config

        return import_claude_config(args.file, args.config, args.merge, args.print_client_config)
    if command == "reload":
        from metasup_mcp.commands.reload import reload

        return reload(args.config, args.wait)
    if command == "demo":
        from metasup_mcp.demo import run_demo

        return run_demo(keep=args.keep)
    if command == "audit":
        from metasup_mcp.commands.audit import audit_verify

        return audit_verify(args.log or load_config(args.config).supervisor.state_dir / "audit.jsonl")
    if command == "status":
        from metasup_mcp.commands.status import status

        return status(args.url, args.config, args.token, args.json)
    if command in ("approve", "reject"):
        from metasup_mcp.commands.decide import decide

        return decide(args.id, command == "approve", args.note, args.url, args.config, args.token)
    from metasup_mcp.commands.serve import serve

    config_path = getattr(args, "config", _CONFIG)
    if not config_path.exists():
        print(f"metasup-mcp: no {config_path} in {Path.cwd()}: pass --config PATH/servers.yaml (or run where "
              "your servers.yaml is; `metasup-mcp init` writes one)", file=sys.stderr)
        return EXIT_CONFIG
    return serve(load_config(config_path), getattr(args, "transport", "stdio"), args)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; for `add`, everything after the first `--` is the server's command, verbatim."""
    parser = _parser()
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        if args.command == "add":
            args.server_command = argv[cut + 1 :]
            return args
    args = parser.parse_args(argv)
    args.server_command = []
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
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
        return EXIT_REFUSED if _is_refusal_to_start(refusal) else EXIT_CONFIG


def _refusal(exc: BaseException) -> Exception | None:
    """The refusal a person can act on inside `exc`, which may come wrapped in task-group exception groups."""
    from metasup_mcp.claude_config import ClaudeConfigError
    from metasup_mcp.commands.init import InitError
    from metasup_mcp.commands.reload import NotRunning
    from metasup_mcp.commands.servers import CommandLineError
    from metasup_mcp.safety.workspace import WorkspaceError
    from metasup_mcp.supervisor import ChangeError, SupervisorError

    known = (ConfigError, SafetyRulesError, SupervisorError, ChangeError, InitError, CommandLineError,
             ClaudeConfigError, WorkspaceError, NotRunning)
    if isinstance(exc, known):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _refusal(inner)) is not None:
                return found
    return None


def _is_refusal_to_start(exc: Exception) -> bool:
    """True for what the supervisor met at run time (exit 1); false for bad input (exit 2)."""
    from metasup_mcp.claude_config import ClaudeConfigError
    from metasup_mcp.commands.init import InitError
    from metasup_mcp.commands.servers import CommandLineError

    return not isinstance(exc, ConfigError | SafetyRulesError | InitError | CommandLineError | ClaudeConfigError)


if __name__ == "__main__":
    sys.exit(main())
