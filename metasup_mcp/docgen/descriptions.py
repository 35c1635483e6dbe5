"""The words of docs/configuration.md that the models cannot say themselves.

Keyed `Model.field`. A key missing here is described by its `Field(description=...)` or by
the comment on its line in `metasup_mcp/config.py`; add a line here for a key that has neither.
Examples are YAML as it would appear under the section's key.
"""

INTRO = """\
# Configuration reference: `servers.yaml`

Generated from the pydantic models in `metasup_mcp/config.py` by
`python -m metasup_mcp.docgen`; `tests/test_docs.py` fails when this page and the models
differ. Do not edit by hand: change the model (or `metasup_mcp/docgen/descriptions.py`) and
regenerate.

Conventions:

- Unknown keys are errors that name the key and its line; `metasup-mcp check-config FILE`
  validates a file and prints the effective configuration (defaults filled in, paths resolved;
  values from the environment shown as `${NAME}`, secret-named `env` values, every header value
  and `status_http.token` as `<set>`).
- Relative paths resolve against the folder of the config file.
- A *duration* is a number of seconds or a number with a unit: `500ms`, `10s`, `5m`, `1h`.
- A *fraction* is a number (`0.1`) or a percentage (`10%`).
- `${VAR}` in `env` and `headers` values is replaced by the supervisor's environment variable
  `VAR` when the config is loaded; an unset variable is an error naming it, and so is
  the operator token (`METASUP_OPERATOR_TOKEN`, or a variable with its value): no child may hold it.
- `metasup-mcp init` writes a commented starting point; `metasup-mcp add` / `remove` /
  `import-claude-config --merge` edit `mcp_servers` with comments kept. `servers.yaml` in the
  repository is a complete, commented example.

A minimal file:

```yaml
supervisor:
  workspace: workspace        # the git repository the children run from
  state_dir: state            # outside the workspace
  mcp_servers:
    - name: time
      command: uvx
      args: [mcp-server-time, --local-timezone, UTC]
    - name: api
      url: https://mcp.example.com/mcp
      headers: {Authorization: "Bearer ${API_TOKEN}"}
```
"""

SECTION_NOTES = {
    "supervisor": "The only top-level key. Everything else lives under it.",
    "supervisor.mcp_servers[].restart": "Per-server override of `supervisor.restart` (same keys).",
    "supervisor.strategy.limits.<key>": "`<key>` is one of `metamorphic`, `exploratory`, `hybrid`, `training`.",
}

DESCRIPTIONS = {
    "SupervisorConfig.workspace": "The git repository the children run from and the safety loop commits to; created with `git init` and a first commit if absent.",
    "SupervisorConfig.workspace_template": "A folder copied into the workspace when the workspace does not exist yet.",
    "SupervisorConfig.state_dir": "Journal, audit log, proposals, backups and keys. Operator-owned: keep it outside the workspace.",
    "SupervisorConfig.min_runtime": "A child that dies sooner than this after a start has failed to start; a change's restarted servers must live this long.",
    "SupervisorConfig.max_failures": "Consecutive failures (rolled-back changes, failed starts) before emergency mode.",
    "SupervisorConfig.protected_paths": "Workspace paths no change may touch (a trailing `/` means a folder). The config file and the state folder are always protected.",
    "SupervisorConfig.writable_paths": "When set, changes may only write under these paths.",
    "SupervisorConfig.safety_rules_file": "YAML list of content rules `[{paths: glob, deny: regex, message}]` every change is checked against.",
    "SupervisorConfig.sandbox": "Isolation of children and checks: `auto` runs them in bubblewrap where the OS allows (else the reaper and detection, said in status), `required` refuses to start without it, `off` runs without. See docs/isolation.md.",
    "SupervisorConfig.hidden_paths": "Paths children and checks must not read, e.g. `[~/.ssh, ~/.aws, ~/.gnupg]` (relative to the workspace, absolute, or under `~`): an empty folder or file in the sandbox; needs bubblewrap (see docs/isolation.md). A path holding the workspace is refused.",
    "SupervisorConfig.readonly_paths": "More paths (relative to the workspace, or absolute) children and checks may read but never write (kernel-enforced in the sandbox).",
    "SupervisorConfig.check_inputs": "Globs of files whose change needs a human approval because they decide what the checks test. Unset: `tests/`, `test/`, `conftest.py` anywhere, the runner's config when a check runs pytest, and the files the checks' commands name.",
    "SupervisorConfig.max_file_bytes": "Largest file a change may write, in bytes. `max_files × max_file_bytes` must stay within 32 MiB, half the wire's message limit.",
    "SupervisorConfig.max_files": "Most files one change may touch.",
    "SupervisorConfig.health_checks": "How children are watched while running.",
    "SupervisorConfig.restart": "Backoff and crash-loop limits for every server (overridable per server).",
    "SupervisorConfig.rollback": "What is kept for rolling back, and periodic backups.",
    "SupervisorConfig.checks": "Run after a change is applied and before the servers restart; any failure rolls the change back.",
    "SupervisorConfig.approval": "Who approves a change before it is applied.",
    "SupervisorConfig.status_http": "The status endpoint, Prometheus metrics and dashboard.",
    "SupervisorConfig.mcp_servers": "The child MCP servers.",
    "HealthChecks.interval": "Time between health samples of each running child.",
    "HealthChecks.max_memory_mb": "Resident memory of the child's whole process tree, in MiB, above which a sample fails.",
    "HealthChecks.max_cpu_percent": "CPU use of the child's process tree (100 = one core) above which a sample fails.",
    "HealthChecks.failure_threshold": "Failed samples in a row (memory, CPU or MCP ping) that restart the child.",
    "HealthChecks.probe_timeout": "How long an MCP liveness probe may take; any JSON-RPC answer counts as alive.",
    "RestartSettings.backoff_initial": "First delay before restarting a failed child; doubles each time (±20 % jitter).",
    "RestartSettings.backoff_max": "Longest delay between restarts.",
    "RestartSettings.max_restarts": "Restarts allowed within `restart_window` before the child goes `fatal`.",
    "RestartSettings.restart_window": "The sliding window in which restarts are counted.",
    "RestartSettings.stable_after": "Uptime after which a child's backoff resets.",
    "RollbackSettings.enabled": "Periodic git-bundle backups of the workspace (rolling back a failed change is always on).",
    "RollbackSettings.keep_commits": "How many refs of each kind under `refs/metasup/` are kept.",
    "RollbackSettings.backup_interval": "Time between git-bundle backups into `<state_dir>/backups/`.",
    "RollbackSettings.keep_backups": "How many backup bundles are kept.",
    "CheckSpec.name": "Shown in results and in the rollback trigger `check:<name>`.",
    "CheckSpec.run": "`builtin:py_compile`, or a command as a list of words (or one string) run in the workspace.",
    "CheckSpec.timeout": "A check still running after this has failed.",
    "ApprovalSettings.mode": "`auto` applies what passes validation; `human` waits for `approve_change` with the operator token; `deny` refuses every change.",
    "ApprovalSettings.human_for": (
        "Patterns of workspace paths that need a human even in `auto` mode, matched as `protected_paths` are: "
        "any letter case, a folder covers what is below it, a glob without `/` matches a name at any depth."
    ),
    "ApprovalSettings.timeout": "An elicitation unanswered, or a change pending a human decision, after this is refused.",
    "ApprovalSettings.operator_token_file": "A file holding the operator token (outside the workspace); else `METASUP_OPERATOR_TOKEN` in the supervisor's environment. At least 16 characters. Needed by approve_change, reload_config, approve_server; 5 wrong tokens in a minute close all of them for up to a minute.",
    "SupervisorConfig.benchmark": "An optional performance metric, measured on each verified commit.",
    "SupervisorConfig.strategy": "How the evolution strategy is chosen, and how much one change may touch under each.",
    "SupervisorConfig.replay": "Replaying sampled read-only calls after each change, to catch changed behaviour.",
    "BenchmarkSettings.run": "The command (a list of words, or one string) run in the workspace; with `metric: output`, its last output line holds the number.",
    "BenchmarkSettings.timeout": "A benchmark still running after this has failed.",
    "BenchmarkSettings.metric": "`output`: the last number on the command's last output line. `wall_time`: the seconds the supervisor timed the command running (lower is better); code under test cannot print its way past it.",
    "BenchmarkSettings.higher_is_better": "Whether a larger number is an improvement (`false` for latencies).",
    "StrategySettings.over_limit": "A change over its strategy's limits is refused (`refuse`) or held for a human (`human`).",
    "StrategySettings.limits": "Per strategy, the most one change may touch.",
    "StrategyLimits.max_files": "Files one change may touch under this strategy (null: no limit).",
    "ReplaySettings.samples_per_tool": "Successful calls kept per read-only tool for replaying.",
    "StatusHttpSettings.enabled": "Serve the status endpoint, `/metrics` and the dashboard.",
    "StatusHttpSettings.host": "Address to bind; a non-loopback address needs `token`.",
    "StatusHttpSettings.port": "TCP port (0 picks a free one).",
    "StatusHttpSettings.token": "Bearer token every endpoint then requires (the page also takes `?token=`); at least 16 characters. 5 wrong tokens from one address in a minute: that address gets 429 until the minute has passed.",
    "ServerConfig.name": "Unique name; also the default namespace of its tools.",
    "ServerConfig.url": "A remote server's streamable HTTP endpoint, instead of `command`.",
    "ServerConfig.headers": "HTTP headers sent to `url`; `${VAR}` is taken from the supervisor's environment.",
    "ServerConfig.command": "The program that starts a local server (`python` means the supervisor's own interpreter). Required unless `url` is given.",
    "ServerConfig.args": "Its arguments.",
    "ServerConfig.env": "Environment for the child: only these plus a minimal base (PATH, HOME, LANG, ...) reach it.",
    "ServerConfig.cwd": "Working folder, relative to the workspace (default: the workspace).",
    "ServerConfig.enabled": "Start it with the supervisor (`false`: configured, started only by `start_server`).",
    "ServerConfig.restart_on_failure": "Restart it when it exits or fails health checks.",
    "ServerConfig.namespace": "Prefix of its tools and prompts (`<namespace>__<tool>`); `\"\"` exposes bare names. Default: the name.",
    "ServerConfig.watch": "Workspace paths whose changes restart this server (`dir/` is a folder prefix, else a glob). Default: all.",
    "ServerConfig.tools": "Which of its tools are exposed.",
    "ServerConfig.min_runtime": "Per-server `min_runtime` (default: the supervisor's).",
    "ServerConfig.restart": "Per-server restart limits (default: the supervisor's `restart`).",
    "ServerConfig.stop_timeout": "How long a graceful stop may take before SIGKILL to its process group.",
    "ServerConfig.call_timeout": "A forwarded tool call with no answer after this fails with a structured error.",
    "ServerConfig.call_wait": "How long a call to a restarting server waits for it to come back.",
    "ServerConfig.handshake_timeout": "How long the MCP handshake and first listing may take at a start.",
    "ToolFilter.allow": "Only these tool names (globs) are exposed; empty: all.",
    "ToolFilter.deny": "These tool names (globs) are hidden.",
}

EXAMPLES = {
    "SupervisorConfig.workspace": "workspace: ~/src/my-servers",
    "SupervisorConfig.workspace_template": "workspace_template: templates/servers",
    "SupervisorConfig.state_dir": "state_dir: state",
    "SupervisorConfig.writable_paths": "writable_paths: [servers/, tests/]",
    "SupervisorConfig.safety_rules_file": "safety_rules_file: safety_rules.yaml",
    "SupervisorConfig.checks": "checks: [{name: tests, run: [python, -m, pytest, -q], timeout: 300s}]",
    "CheckSpec.name": "name: tests",
    "CheckSpec.run": "run: [python, -m, pytest, -q]",
    "ApprovalSettings.human_for": "human_for: ['*.sql', 'deploy/**']",
    "BenchmarkSettings.run": "run: [python, bench.py]",
    "StrategySettings.limits": "limits: {hybrid: {max_files: 3, max_lines: 200}}",
    "ReplaySettings.tools": "tools: {'notes__list_*': shape}",
    "ApprovalSettings.operator_token_file": "operator_token_file: operator.token",
    "StatusHttpSettings.token": "token: ${STATUS_TOKEN}",
    "ServerConfig.name": "name: notes",
    "ServerConfig.url": "url: https://mcp.example.com/mcp",
    "ServerConfig.headers": "headers: {Authorization: 'Bearer ${API_TOKEN}'}",
    "ServerConfig.command": "command: uvx",
    "ServerConfig.args": "args: [mcp-server-time, --local-timezone, UTC]",
    "ServerConfig.env": "env: {NOTES_DIR: data/notes}",
    "ServerConfig.cwd": "cwd: servers/notes",
    "ServerConfig.namespace": "namespace: notes",
    "ServerConfig.watch": "watch: [notes.py, notes/]",
    "ServerConfig.min_runtime": "min_runtime: 3s",
    "ServerConfig.restart": "restart: {max_restarts: 10}",
    "ToolFilter.allow": "allow: [search_*]",
    "ToolFilter.deny": "deny: [delete_*]",
}
