"""`init`, `add`, `remove` and `import-claude-config`: configs written and edited in place,
validated, comments kept, and nothing written when the result would be invalid."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from metasup_mcp.claude_config import valid_name
from metasup_mcp.cli import EXIT_CONFIG, main
from metasup_mcp.config import MAX_EXPOSED_NAME, load_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "servers.yaml"

CLAUDE = {
    "mcpServers": {
        "filesystem": {
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/Documents"],
        },
        "My Notes (beta)": {"command": "uvx", "args": ["notes-mcp"], "env": {"NOTES_TOKEN": "s3cret"}},
        "remote__api": {"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer t"}},
        "plain-url": {"url": "http://127.0.0.1:9999/mcp"},
        "old-sse": {"type": "sse", "url": "https://legacy.example.com/sse"},
    },
    "globalShortcut": "Ctrl+Space",
}


@pytest.fixture
def config(tmp_path: Path, pinned_git: None) -> Path:
    """A fresh `init` in tmp_path/ops (workspace tmp_path/ops/workspace)."""
    assert main(["init", str(tmp_path / "ops")]) == 0
    return tmp_path / "ops" / "servers.yaml"


def test_init_writes_a_config_that_check_config_accepts_with_config_and_state_outside_the_workspace(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["check-config", str(config)]) == 0
    effective = json.loads(capsys.readouterr().out)["supervisor"]
    workspace, state = Path(effective["workspace"]), Path(effective["state_dir"])
    assert (workspace / ".git").is_dir() and state.is_dir()
    assert not config.is_relative_to(workspace) and not state.is_relative_to(workspace)
    assert effective["mcp_servers"] == []
    assert "# The git repository the children run from" in config.read_text()


def test_init_governs_an_existing_repository_from_beside_it_without_committing_anything(
    tmp_path: Path, pinned_git: None
) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "app.py").write_text("print('hi')\n")
    subprocess.run(["git", "-C", str(repo), "add", "app.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "first"], check=True)
    (repo / "TODO.txt").write_text("mine\n")
    assert main(["init", str(tmp_path / "ops"), "--workspace", str(repo)]) == 0
    loaded = load_config(tmp_path / "ops" / "servers.yaml").supervisor
    assert loaded.workspace == repo.resolve()
    log = subprocess.run(["git", "-C", str(repo), "log", "--oneline"], capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 1 and (repo / "TODO.txt").read_text() == "mine\n"


def test_init_refuses_to_put_the_config_inside_the_workspace_or_over_an_existing_one(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = config.read_text()
    assert main(["init", str(config.parent)]) == EXIT_CONFIG
    assert "already exists" in capsys.readouterr().err and config.read_text() == before
    inside = tmp_path / "ops" / "workspace" / "conf"
    assert main(["init", str(inside), "--workspace", str(tmp_path / "ops" / "workspace")]) == EXIT_CONFIG
    assert "must live outside it" in capsys.readouterr().err and not inside.exists()


def test_add_then_remove_leaves_the_shipped_config_byte_for_byte_with_its_comments(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text(SHIPPED.read_text())
    assert main(["add", "time", "--config", str(path), "--env", "TZ=UTC", "--watch", "time/",
                 "--", "uvx", "mcp-server-time", "--local-timezone", "UTC"]) == 0
    added = load_config(path).supervisor.mcp_servers[-1]
    assert (added.name, added.command, added.args) == ("time", "uvx", ["mcp-server-time", "--local-timezone", "UTC"])
    assert added.env == {"TZ": "UTC"} and added.watch == ["time/"]
    assert "# `python` means the interpreter that runs the supervisor" in path.read_text()
    assert main(["remove", "time", "--config", str(path)]) == 0
    assert path.read_text() == SHIPPED.read_text()


def test_remove_keeps_the_comments_around_the_other_servers(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text(SHIPPED.read_text())
    assert main(["remove", "textkit", "--config", str(path)]) == 0
    text = path.read_text()
    assert "textkit" not in text.split("mcp_servers:")[1]
    assert "env: {}                    # only these plus a minimal base environment reach the child" in text
    assert [s.name for s in load_config(path).supervisor.mcp_servers] == ["notes"]


def test_add_of_a_remote_server_keeps_header_references_unexpanded_in_the_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "t0ken")
    assert main(["add", "api", "--config", str(config), "--url", "https://mcp.example.com/mcp",
                 "--header", "Authorization=Bearer ${API_TOKEN}"]) == 0
    assert "Authorization: Bearer ${API_TOKEN}" in config.read_text()
    server = load_config(config).supervisor.mcp_servers[0]
    assert server.url == "https://mcp.example.com/mcp" and server.headers == {"Authorization": "Bearer t0ken"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["add", "time", "--", "uvx", "x"], "a server named 'time' already exists"),
        (["add", "nothing"], "give the server's command after `--`"),
        (["add", "both", "--url", "http://h/mcp", "--", "cmd"], "not both"),
        (["add", "e", "--env", "NOEQUALS", "--", "cmd"], "--env 'NOEQUALS' is not KEY=VALUE"),
        (["add", "u", "--url", "ftp://h/x"], "is not an http:// or https:// URL"),
        (["add", "a__b", "--", "cmd"], "cannot contain '__'"),
        (["remove", "ghost"], "no server named 'ghost'"),
    ],
)
def test_an_edit_that_would_be_invalid_is_refused_naming_why_and_the_file_is_untouched(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["add", "time", "--config", str(config), "--", "uvx", "mcp-server-time"]) == 0
    before = config.read_text()
    assert main([*argv[:2], "--config", str(config), *argv[2:]]) == EXIT_CONFIG
    assert message in capsys.readouterr().err
    assert config.read_text() == before


def test_import_prints_stdio_and_url_servers_with_valid_names_env_kept_and_sse_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claude = tmp_path / "claude_desktop_config.json"
    claude.write_text(json.dumps(CLAUDE))
    assert main(["import-claude-config", str(claude)]) == 0
    out, err = capsys.readouterr()
    servers = {s["name"]: s for s in yaml.safe_load(out)["mcp_servers"]}
    assert servers == {
        "filesystem": {"name": "filesystem", "command": "npx",
                       "args": ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/Documents"]},
        "My_Notes_beta": {"name": "My_Notes_beta", "command": "uvx", "args": ["notes-mcp"],
                          "env": {"NOTES_TOKEN": "<hidden>"}},  # the value is written by --merge only
        "remote_api": {"name": "remote_api", "url": "https://mcp.example.com/mcp",
                       "headers": {"Authorization": "<hidden>"}},
        "plain-url": {"name": "plain-url", "url": "http://127.0.0.1:9999/mcp"},
    }
    assert "'My Notes (beta)' is named 'My_Notes_beta'" in err
    assert "skipped 'old-sse': legacy SSE" in err


def test_import_merges_into_a_config_that_then_validates_and_a_second_import_adds_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claude = tmp_path / "claude.json"
    claude.write_text(json.dumps(CLAUDE))
    assert main(["add", "filesystem", "--config", str(config), "--", "my-own-fs"]) == 0
    assert main(["import-claude-config", str(claude), "--config", str(config), "--merge"]) == 0
    names = [s.name for s in load_config(config).supervisor.mcp_servers]
    assert names == ["filesystem", "filesystem-2", "My_Notes_beta", "remote_api", "plain-url"]
    assert "# Journal, audit log, proposals and backups." in config.read_text()
    capsys.readouterr()
    assert main(["import-claude-config", str(claude), "--config", str(config), "--merge"]) == 0
    assert [s.name for s in load_config(config).supervisor.mcp_servers] == names
    assert "imported 0 server(s)" in capsys.readouterr().err


def test_import_reads_the_platform_default_path_and_says_which_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["import-claude-config"]) == EXIT_CONFIG
    assert f"{tmp_path}/xdg/Claude/claude_desktop_config.json: no such file" in capsys.readouterr().err
    default = tmp_path / "xdg" / "Claude" / "claude_desktop_config.json"
    default.parent.mkdir(parents=True)
    default.write_text(json.dumps(CLAUDE))
    assert main(["import-claude-config"]) == 0
    assert "filesystem" in capsys.readouterr().out


def test_import_refuses_a_file_that_is_not_a_claude_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "c.json"
    for text, message in [("{not json", "cannot read it as JSON"), ('{"servers": {}}', "has no `mcpServers`")]:
        bad.write_text(text)
        assert main(["import-claude-config", str(bad)]) == EXIT_CONFIG
        assert message in capsys.readouterr().err


def test_print_client_config_is_the_one_entry_that_runs_the_supervisor_on_this_config(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["import-claude-config", "--print-client-config", "--config", str(config)]) == 0
    entry = json.loads(capsys.readouterr().out)["mcpServers"]["metasup"]
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    assert entry["args"][-3:] == ["serve", "--config", str(config.resolve())]


@pytest.mark.parametrize("raw", ["a b", "x" * 100, "__", "ns__tool", "émoji✓", "-", "a" * 49 + "__b"])
def test_imported_names_are_valid_namespaces_and_unique(raw: str) -> None:
    taken: set[str] = set()
    for _ in range(3):
        name = valid_name(raw, taken)
        assert name not in taken and "__" not in name and name.strip("_-")
        assert len(name) + 2 + 1 <= MAX_EXPOSED_NAME
        taken.add(name)


def test_check_config_and_import_never_print_env_header_or_token_values(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret in env, headers or status_http.token (literal or from ${VAR}) is not echoed to the
    terminal (or a CI log): the keys are shown, the values hidden; --merge still writes them."""
    claude = tmp_path / "claude_desktop_config.json"
    claude.write_text(json.dumps(CLAUDE))
    monkeypatch.setenv("STATUS_SECRET", "status-s3cret-from-env")
    text = config.read_text().replace("mcp_servers: []", "mcp_servers: []\n  status_http: {token: '${STATUS_SECRET}'}")
    config.write_text(text.replace("  status_http: {enabled: true, host: 127.0.0.1, port: 9000}\n", ""))
    run = [str(ROOT / ".venv" / "bin" / "metasup-mcp")]
    preview = subprocess.run([*run, "import-claude-config", str(claude)], capture_output=True, text=True, check=True)
    assert "s3cret" not in preview.stdout + preview.stderr and "Bearer t" not in preview.stdout
    assert "NOTES_TOKEN" in preview.stdout and "--merge" in preview.stderr
    subprocess.run([*run, "import-claude-config", str(claude), "--merge", "--config", str(config)], check=True,
                   capture_output=True)
    assert "s3cret" in config.read_text()  # written as Claude Desktop had it
    checked = subprocess.run([*run, "check-config", str(config)], capture_output=True, text=True, check=True)
    assert "s3cret" not in checked.stdout + checked.stderr and "Bearer t" not in checked.stdout
    shown = json.loads(checked.stdout)["supervisor"]
    assert shown["status_http"]["token"] != "status-s3cret-from-env"
    assert set(next(s for s in shown["mcp_servers"] if s["name"] == "My_Notes_beta")["env"]) == {"NOTES_TOKEN"}


def test_init_with_a_file_for_workspace_says_so_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    assert main(["init", str(tmp_path / "ops"), "--workspace", str(tmp_path / "notes.txt")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "--workspace" in err
    assert not (tmp_path / "ops").exists() and (tmp_path / "notes.txt").read_text() == "mine\n"


def test_import_skips_a_malformed_entry_naming_the_key_and_imports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claude = tmp_path / "claude_desktop_config.json"
    claude.write_text(json.dumps({"mcpServers": {
        "letters": {"command": "npx", "args": "-y @scope/server"},
        "listed": {"url": "https://mcp.example.com/mcp", "headers": ["Authorization: Bearer sk-zzz"]},
        "numbered": {"command": 5},
        "good": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"}},
    }}))
    assert main(["import-claude-config", str(claude)]) == 0
    out, err = capsys.readouterr()
    assert [s["name"] for s in yaml.safe_load(out)["mcp_servers"]] == ["good"]
    assert "skipped 'letters': `args` must be a list of strings" in err
    assert "skipped 'listed': `headers` must be an object" in err and "sk-zzz" not in err + out
    assert "skipped 'numbered': `command` must be a string" in err
