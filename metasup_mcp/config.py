"""The `servers.yaml` model: validation, durations and sizes, paths, and errors that name the key.

`load_config(path)` returns a `Config` or raises `ConfigError`, whose lines each name the
offending key (as a dotted path) and, where YAML gives one, the line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import urllib.parse
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_EXPOSED_NAME = 64  # what MCP clients accept for a tool or prompt name
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# The longest JSON-RPC message the stdio wire and the HTTP transport read. A change set must fit
# in it with room for JSON escaping, so `max_files × max_file_bytes` may use half of it.
WIRE_MESSAGE_BYTES = 64 * 1024 * 1024
CHANGE_SET_BUDGET = WIRE_MESSAGE_BYTES // 2
OPERATOR_TOKEN_ENV = "METASUP_OPERATOR_TOKEN"
# The operator and status tokens: shorter ones could be walked through, however slowly guesses go.
MIN_TOKEN_LENGTH = 16
HOW_TO_MAKE_A_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Commands that mean "the interpreter running the supervisor", so that example children can
# import the same `mcp` package without the user activating a virtualenv first.
_SELF_PYTHON = {"python", "python3"}


def _name_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def resolve_command(command: str) -> str:
    """`python`/`python3` mean the interpreter running the supervisor; anything else is as given."""
    return sys.executable if command in _SELF_PYTHON else command


class ConfigError(Exception):
    """`servers.yaml` is unusable; `problems` holds one actionable line per fault."""

    def __init__(self, source: Path | str, problems: list[str]) -> None:
        self.source = str(source)
        self.problems = problems
        super().__init__(f"{source}: invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def parse_duration(value: Any) -> float:
    """`500ms`, `10s`, `5m`, `1h` or a bare number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 10s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: use a number with ms, s, m or h (e.g. 10s)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_fraction(value: Any) -> float:
    """`10%` or `0.1` → 0.1."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage such as 10%") from None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a fraction such as 0.1 or a percentage such as 10%")
    try:
        fraction = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a fraction such as 0.1 or a percentage such as 10%") from None
    if fraction < 0:
        raise ValueError("cannot be negative")
    return fraction


Fraction = Annotated[float, BeforeValidator(parse_fraction)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthChecks(_Strict):
    interval: Duration = Field(5.0, gt=0)
    max_memory_mb: float = Field(4096, gt=0)
    max_cpu_percent: float = Field(90, gt=0)
    failure_threshold: int = Field(3, ge=1)
    probe_timeout: Duration = Field(5.0, gt=0)


class RestartSettings(_Strict):
    """Backoff and crash-loop limits; settable globally and per server."""

    backoff_initial: Duration = Field(1.0, gt=0)  # the restart policy needs a positive delay
    backoff_max: Duration = 60.0
    max_restarts: int = Field(5, ge=0)
    restart_window: Duration = 60.0
    stable_after: Duration = 120.0


class RollbackSettings(_Strict):
    enabled: bool = True
    keep_commits: int = Field(10, ge=1)
    backup_interval: Duration = 3600.0
    keep_backups: int = Field(3, ge=1)


class CheckSpec(_Strict):
    """A verification step run after a change is applied: `builtin:py_compile` or a command."""

    name: str = Field(min_length=1)
    run: str | list[str]
    timeout: Duration = 300.0

    @field_validator("run")
    @classmethod
    def _non_empty(cls, run: str | list[str]) -> str | list[str]:
        if not run:
            raise ValueError("`run` needs a command (a list of words) or builtin:py_compile")
        return run


class ApprovalSettings(_Strict):
    """Who approves a change: `auto`, `human` (MCP elicitation or the operator token), `deny`."""

    mode: Literal["auto", "human", "deny"] = "auto"
    human_for: list[str] = []  # globs of workspace paths that always need a human
    timeout: Duration = Field(300.0, gt=0)  # an elicitation unanswered, or a pending proposal, after this is refused
    operator_token_file: Path | None = None  # must lie outside the workspace; else METASUP_OPERATOR_TOKEN
    # Ask the proposing client through MCP elicitation. Its answer is the client's: where the
    # agent drives its own client, set false so that only an operator (with the token) decides.
    elicit: bool = True


class BenchmarkSettings(_Strict):
    """A command run on each verified commit. Its metric is the number on its last output line
    (`metric: output`), or the seconds the supervisor timed it running (`metric: wall_time`):
    code under test runs in the benchmark's process and could print a number of its own at exit;
    it cannot change the supervisor's clock. A timed command should run long enough (half a second
    or more) that process start-up on a loaded machine, tens of milliseconds, is a small share."""

    run: str | list[str]
    timeout: Duration = Field(60.0, gt=0)
    max_regression: Fraction = 0.10  # 10%: a metric worse than last good's by more is rolled back
    metric: Literal["output", "wall_time"] = "output"
    higher_is_better: bool = True

    @model_validator(mode="before")
    @classmethod
    def _wall_time_is_lower_is_better(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("metric") == "wall_time":
            if data.get("higher_is_better") is True:
                raise ValueError("metric: wall_time is in seconds, lower is better: drop higher_is_better: true")
            return {**data, "higher_is_better": False}
        return data


class StrategyLimits(_Strict):
    """The most one change may touch under a strategy (None: no limit)."""

    max_files: int | None = Field(None, ge=1)
    max_lines: int | None = Field(None, ge=1)  # lines added plus removed; a line counts once per 120 characters


def default_strategy_limits() -> dict[str, StrategyLimits]:
    return {
        "metamorphic": StrategyLimits(max_files=2, max_lines=60),
        "exploratory": StrategyLimits(max_files=10, max_lines=600),
        "hybrid": StrategyLimits(max_files=5, max_lines=300),
        "training": StrategyLimits(),
    }


class StrategySettings(_Strict):
    """The seed's strategy selector, thresholds configurable; each strategy's change limits."""

    metamorphic_after_failures: int = Field(3, ge=0)  # more consecutive failures than this → metamorphic
    min_gain: float = 0.05  # a performance gain under this → exploratory
    training: bool = False  # always `training` (the limits of `training` apply)
    over_limit: Literal["refuse", "human"] = "refuse"
    limits: dict[Literal["metamorphic", "exploratory", "hybrid", "training"], StrategyLimits] = Field(
        default_factory=default_strategy_limits
    )


class ReplaySettings(_Strict):
    """Replay of sampled successful calls to `readOnlyHint: true` tools after each change."""

    max_calls: int = Field(10, ge=0)  # replayed per change (0: replay is off)
    samples_per_tool: int = Field(3, ge=1)
    mode: Literal["exact", "shape", "off"] = "exact"  # for tools not named in `tools`
    tools: dict[str, Literal["exact", "shape", "off"]] = {}  # exposed tool name (glob) → mode


class StatusHttpSettings(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    token: str | None = None

    @field_validator("token")
    @classmethod
    def _long_enough_to_resist_guessing(cls, token: str | None) -> str | None:
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"is {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}: use a random one "
                             f"({HOW_TO_MAKE_A_TOKEN})")
        return token


class ToolFilter(_Strict):
    allow: list[str] = []
    deny: list[str] = []
    # The child's own tool name -> the name exposed after the namespace (for names clients reject).
    rename: dict[str, str] = {}

    @field_validator("rename")
    @classmethod
    def _renames_are_client_safe(cls, rename: dict[str, str]) -> dict[str, str]:
        for original, name in rename.items():
            if not NAME_PATTERN.match(name) or len(name) > MAX_EXPOSED_NAME:
                raise ValueError(
                    f"tools.rename: {original!r} -> {name!r}: a new name may only use A-Z a-z 0-9 _ - "
                    f"(at most {MAX_EXPOSED_NAME} characters)"
                )
        return rename


class ServerConfig(_Strict):
    """One child MCP server: a local process (`command`) or a remote one over streamable HTTP (`url`)."""

    name: str = Field(min_length=1)
    url: str | None = None  # a remote server's streamable HTTP endpoint, instead of `command`
    headers: dict[str, str] = {}  # sent with every request to `url`; `${VAR}` from the supervisor's environment
    command: str | None = Field(None, validate_default=True)  # required unless `url` is given
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None  # relative to the workspace
    enabled: bool = True
    restart_on_failure: bool = True
    namespace: str | None = None
    watch: list[str] = []
    tools: ToolFilter = ToolFilter()
    min_runtime: Duration | None = None
    restart: RestartSettings | None = None
    stop_timeout: Duration = 5.0
    call_timeout: Duration = 120.0
    call_wait: Duration = 5.0
    handshake_timeout: Duration = 30.0
    # A first start that keeps writing to stderr (npx/uvx downloading) may take this long.
    startup_timeout: Duration = 120.0

    @field_validator("command")
    @classmethod
    def _command_given(cls, command: str | None, info: ValidationInfo) -> str | None:
        if command is None and info.data.get("url") is None:
            raise PydanticCustomError("missing", "give `command` (a local server) or `url` (a remote one)")
        if command is not None and not command.strip():
            raise ValueError("command is empty: give the program that starts this MCP server (e.g. python)")
        return command

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{shown_url(url)!r} is not an http:// or https:// URL of a streamable HTTP MCP endpoint")
        return url

    @field_validator("env", "headers")
    @classmethod
    def _expand_env(cls, env: dict[str, str]) -> dict[str, str]:
        def expand(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ValueError(f"${{{name}}} is not set in the supervisor's environment")
            operator = os.environ.get(OPERATOR_TOKEN_ENV)
            if name == OPERATOR_TOKEN_ENV or (operator and os.environ[name] == operator):
                # A child holding it could approve changes (the dashboard's POST, approve_change).
                raise ValueError(
                    f"${{{name}}} is the operator token, which no child may be given: remove it "
                    "(give the server a token of its own)"
                )
            return os.environ[name]

        return {key: _ENV_REF.sub(expand, value) for key, value in env.items()}

    @model_validator(mode="after")
    def _command_or_url(self) -> ServerConfig:
        if self.command is not None and self.url is not None:
            raise ValueError("give either `command` (a local server) or `url` (a remote streamable HTTP server), not both")
        if self.url is not None and (self.args or self.env):
            raise ValueError("`args` and `env` apply to a `command`; a `url` server takes `headers`")
        if self.command is not None and self.headers:
            raise ValueError("`headers` apply to a `url` server; a `command` server takes `env`")
        return self

    @property
    def is_remote(self) -> bool:
        return self.url is not None

    @property
    def exposed_namespace(self) -> str:
        """The tool prefix: `namespace` if set (may be ""), else the name made name-safe."""
        if self.namespace is not None:
            return self.namespace
        return _name_safe(self.name)

    @property
    def resource_key(self) -> str:
        """The segment that addresses its resources (`metasup://ns/<key>/...`): never empty."""
        return self.exposed_namespace or _name_safe(self.name)

    def watches(self, path: str) -> bool:
        """Whether a change to workspace-relative `path` concerns this server (no `watch`: all do).

        A `watch` entry ending in `/` is a folder prefix; any other entry is a glob or a path.
        A `path` ending in `/` asks about a folder (or a symlink or nested repository the server
        may load code through): whether an entry names it or may name anything under it.
        """
        if self.url is not None:
            return False  # a remote server runs no workspace code: changes never restart it
        if not self.watch:
            return True
        if path.endswith("/"):
            return any(_may_name_under(entry, path) for entry in self.watch)
        return any(
            path.startswith(entry) if entry.endswith("/") else (path == entry or fnmatch.fnmatch(path, entry))
            for entry in self.watch
        )

    @property
    def executable(self) -> str:
        if self.command is None:
            raise ValueError(f"server {self.name!r} is remote ({shown_url(self.url)}): it has no executable")
        return resolve_command(self.command)


def _may_name_under(entry: str, folder: str) -> bool:
    """Whether `watch` entry `entry` names `folder` (ending in `/`) or may name a path under it:
    every path an entry matches starts with the entry's text before its first glob character
    (fnmatch's `*` matches `/` too), so the two must agree as far as both go. Sound, not tight."""
    literal = entry[: min((i for i, c in enumerate(entry) if c in "*?["), default=len(entry))]
    if literal == entry and not entry.endswith("/"):
        return entry.startswith(folder) or entry == folder[:-1]  # a path: below the folder, or it
    return literal.startswith(folder) or folder.startswith(literal)


class SupervisorConfig(_Strict):
    workspace: Path = Path(".")
    workspace_template: Path | None = None  # copied into a workspace that does not exist yet
    # None: beside the config when that is outside the workspace, else under the user's
    # state home keyed by the workspace path (see `default_state_dir`). Never inside the workspace.
    state_dir: Path | None = None
    data_paths: list[str] = []  # files servers write at run time: never committed, never rolled back
    min_runtime: Duration = 10.0
    max_failures: int = Field(5, ge=1)
    protected_paths: list[str] = ["servers.yaml", "config/safety_rules.yaml", ".git/"]
    sandbox: Literal["auto", "required", "off"] = "auto"
    readonly_paths: list[str] = []
    hidden_paths: list[str] = []  # what children and checks must not read (`~` is the user's home)
    check_inputs: list[str] | None = None
    writable_paths: list[str] = []
    safety_rules_file: Path | None = None
    max_file_bytes: int = Field(256 * 1024, gt=0)
    max_files: int = Field(100, gt=0)
    health_checks: HealthChecks = HealthChecks()
    restart: RestartSettings = RestartSettings()
    rollback: RollbackSettings = RollbackSettings()
    checks: list[CheckSpec] = [CheckSpec(name="compile", run="builtin:py_compile")]
    approval: ApprovalSettings = ApprovalSettings()
    benchmark: BenchmarkSettings | None = None
    strategy: StrategySettings = StrategySettings()
    replay: ReplaySettings = ReplaySettings()
    status_http: StatusHttpSettings = StatusHttpSettings()
    mcp_servers: list[ServerConfig] = []
    # Longest exposed tool or prompt name; longer ones are cut (see docs/gateway.md). Some clients cut at 60.
    max_tool_name: int = Field(MAX_EXPOSED_NAME, ge=16, le=MAX_EXPOSED_NAME)

    @model_validator(mode="after")
    def _change_sets_fit_the_wire(self) -> SupervisorConfig:
        if self.max_files * self.max_file_bytes > CHANGE_SET_BUDGET:
            raise ValueError(
                f"max_files × max_file_bytes is {self.max_files * self.max_file_bytes} bytes, more than a request "
                f"can carry ({CHANGE_SET_BUDGET} bytes, half the {WIRE_MESSAGE_BYTES}-byte wire limit, leaving room "
                "for JSON escaping): lower one of them"
            )
        return self

    @field_validator("mcp_servers")
    @classmethod
    def _unique_servers(cls, servers: list[ServerConfig]) -> list[ServerConfig]:
        seen: dict[str, str] = {}
        for server in servers:
            if server.name in seen:
                raise ValueError(f"two servers are named {server.name!r}: server names must be unique")
            seen[server.name] = server.name
        namespaces: dict[str, str] = {}
        for server in servers:
            ns = server.exposed_namespace
            if ns and not NAME_PATTERN.match(ns):
                raise ValueError(f"server {server.name!r}: namespace {ns!r} may only use A-Z a-z 0-9 _ -")
            if ns and "__" in ns:
                raise ValueError(f"server {server.name!r}: namespace {ns!r} cannot contain '__' (the separator)")
            if ns and ns in namespaces:
                raise ValueError(
                    f"servers {namespaces[ns]!r} and {server.name!r} share the namespace {ns!r}: "
                    "give one of them its own `namespace`"
                )
            namespaces[ns] = server.name
            if len(ns) + len("__") + 1 > MAX_EXPOSED_NAME:
                raise ValueError(
                    f"server {server.name!r}: namespace {ns!r} is {len(ns)} characters, so every tool name "
                    f"would exceed {MAX_EXPOSED_NAME}; set a shorter `namespace`"
                )
        keys: dict[str, str] = {}
        for server in servers:
            if server.resource_key in keys:
                raise ValueError(
                    f"servers {keys[server.resource_key]!r} and {server.name!r} would both address their "
                    f"resources as metasup://ns/{server.resource_key}/...: give one of them its own `namespace`"
                )
            keys[server.resource_key] = server.name
        return servers



class Config(_Strict):
    supervisor: SupervisorConfig
    source: Path | None = None  # the file it was read from; operator-owned
    source_sha256: str | None = None  # of the text it was read from: status shows a later edit



def load_config(path: Path | str) -> Config:
    """Read, validate and resolve a `servers.yaml`; raise `ConfigError` naming every fault."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    return parse_config(text, source=path)


def parse_config(text: str, source: Path) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(data, dict) or "supervisor" not in data:
        raise ConfigError(source, ["the file must be a mapping with a top-level `supervisor:` key"])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        config = Config.model_validate({**data, "source": source, "source_sha256": digest})
    except ValidationError as exc:
        lines = _key_lines(root)
        raise ConfigError(source, [_describe(error, lines) for error in exc.errors()]) from exc
    config = _resolve_paths(config, source.parent, source)
    _refuse_state_inside_workspace(config)
    return config


def _describe(error: Any, lines: dict[tuple[Any, ...], int]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc).replace(".[", "[")
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f" (line {line})" if line else ""
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key: remove it or check its spelling"
    elif error["type"] == "missing":
        message = "required key is missing"
    return f"{key or '<top>'}{where}: {message}"


def _key_lines(node: yaml.Node | None, loc: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML document to the 1-based line where it appears."""
    lines: dict[tuple[Any, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_loc = (*loc, key_node.value)
            lines[key_loc] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key_loc))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_loc = (*loc, index)
            lines[item_loc] = item.start_mark.line + 1
            lines.update(_key_lines(item, item_loc))
    return lines


def _resolve_paths(config: Config, base: Path, source: Path) -> Config:
    sup = config.supervisor

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    approval = sup.approval.model_copy(update={"operator_token_file": resolve(sup.approval.operator_token_file)})
    workspace = resolve(sup.workspace)
    assert workspace is not None
    state_dir = resolve(sup.state_dir) if sup.state_dir is not None else default_state_dir(workspace, config.source)
    resolved = sup.model_copy(
        update={
            "workspace": workspace,
            "workspace_template": resolve(sup.workspace_template),
            "state_dir": state_dir,
            "safety_rules_file": resolve(sup.safety_rules_file),
            "approval": approval,
        }
    )
    token_file = approval.operator_token_file
    if token_file is not None and token_file.is_relative_to(resolved.workspace):
        # A child (or a change) could read or replace a token kept where it runs.
        raise ConfigError(source, [
            f"supervisor.approval.operator_token_file: {token_file} lies inside the workspace; "
            "keep the operator token outside it (or use METASUP_OPERATOR_TOKEN)"
        ])
    for entry in sup.hidden_paths:
        hidden = (workspace / Path(entry).expanduser()).resolve()
        if workspace.is_relative_to(hidden):
            raise ConfigError(source, [
                f"supervisor.hidden_paths: {entry} ({hidden}) holds the workspace, and children must see their own "
                "code: hide the folders beside it instead (e.g. ~/.ssh, ~/.aws)"
            ])
    return config.model_copy(update={"supervisor": resolved})


def default_state_dir(workspace: Path, config_file: Path | None) -> Path:
    """`.metasup` beside a config file that lies outside the workspace; otherwise
    `$XDG_STATE_HOME/metasup/<workspace name>-<hash of its path>` (`~/.local/state/...`)."""
    workspace = workspace.resolve()
    if config_file is not None and not _inside(config_file.resolve().parent / ".metasup", workspace):
        return config_file.resolve().parent / ".metasup"
    home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha256(str(workspace).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return home / "metasup" / f"{_name_safe(workspace.name) or 'root'}-{key}"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _refuse_state_inside_workspace(config: Config) -> None:
    sup = config.supervisor
    assert sup.state_dir is not None
    state, workspace = sup.state_dir.resolve(), sup.workspace.resolve()
    if _inside(state, workspace):
        raise ConfigError(
            config.source or "servers.yaml",
            [
                f"supervisor.state_dir: {state} is inside the workspace {workspace}; the state folder "
                "(journal, audit log, proposals, backups) must live outside what the supervised servers "
                "can change: remove `state_dir` to use the default outside it, or name a folder outside"
            ],
        )


def check_executables(config: Config) -> list[str]:
    """Warnings for commands that cannot be found on PATH (not fatal: PATH may differ at run time)."""
    warnings = []
    for server in config.supervisor.mcp_servers:
        if server.command is not None and shutil.which(server.executable) is None:
            warnings.append(f"server {server.name!r}: command {server.command!r} is not on PATH")
    return warnings


HIDDEN = "<hidden>"


def hide_secrets(server: dict[str, Any]) -> dict[str, Any]:
    """A server entry with its `env` and `headers` values replaced by HIDDEN (keys kept): they
    hold API keys and tokens, which a printout (a terminal, a CI log) must never show."""
    shown = {
        key: {name: HIDDEN for name in value} if key in ("env", "headers") and isinstance(value, dict) else value
        for key, value in server.items()
    }
    if isinstance(shown.get("url"), str):
        shown["url"] = shown_url(shown["url"])
    return shown


def shown_url(url: str) -> str:
    """`url` as it may be shown (status, logs, errors): without a `user:password@` and with every
    query value hidden; hosted MCP servers often take their API key there."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{pair.partition('=')[0]}={HIDDEN}" for pair in parts.query.split("&") if pair)
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, ""))


def effective_config(config: Config) -> dict[str, Any]:
    """The config as the supervisor will use it, for `check-config` (JSON-safe), secrets hidden:
    a value expanded from the environment shows as its `${NAME}`; a server `env` entry whose
    name says secret, every header value and the status token as `<set>`."""
    from metasup_mcp.redact import Redactor, looks_secret, secrets_from

    as_reference = Redactor(secrets_from(os.environ))
    data = as_reference.data(config.model_dump(mode="json"), template="${{{name}}}")
    sup = data["supervisor"]
    for server in sup.get("mcp_servers", []):
        server["env"] = {
            k: "<set>" if looks_secret(k) and not v.startswith("${") else v for k, v in server["env"].items()
        }
        # Headers carry credentials whatever their name (Authorization, X-Api-Key...).
        server["headers"] = {k: v if v.startswith("${") else "<set>" for k, v in server.get("headers", {}).items()}
    if sup.get("status_http", {}).get("token"):
        sup["status_http"]["token"] = "<set>"
    return data
