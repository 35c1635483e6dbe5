"""`servers.yaml`: durations, path resolution, environment expansion, namespace rules, and
errors that name the key (and the line) of every fault."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from metasup_mcp.config import ConfigError, effective_config, load_config, parse_duration


def write(tmp_path: Path, text: str, name: str = "servers.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def servers_yaml(tmp_path: Path, *servers: dict[str, object], **supervisor: object) -> Path:
    body = {"supervisor": {**supervisor, "mcp_servers": list(servers)}}
    return write(tmp_path, yaml.safe_dump(body, sort_keys=False))


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


# -- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), ("10", 10.0), (2, 2.0), (0.25, 0.25)],
)
def test_durations_read_ms_s_m_h_and_bare_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 parsecs", "fast", "-5s", "1h30m", "", True, -1])
def test_anything_else_is_not_a_duration(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_durations_in_the_file_become_seconds(tmp_path: Path) -> None:
    config = load_config(servers_yaml(
        tmp_path, min_runtime="500ms", health_checks={"interval": "10s", "probe_timeout": "5m"},
        rollback={"backup_interval": "1h"},
    ))
    sup = config.supervisor
    assert (sup.min_runtime, sup.health_checks.interval) == (0.5, 10.0)
    assert (sup.health_checks.probe_timeout, sup.rollback.backup_interval) == (300.0, 3600.0)


def test_a_bad_duration_names_its_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "supervisor:\n  health_checks:\n    interval: fast\n")
    assert problems(path) == [
        "supervisor.health_checks.interval (line 3): 'fast' is not a duration: use a number with ms, s, m or h (e.g. 10s)"
    ]


def test_zero_where_zero_cannot_work_is_refused(tmp_path: Path) -> None:
    path = servers_yaml(tmp_path, health_checks={"interval": "0s", "probe_timeout": 0}, restart={"backoff_initial": 0})
    found = problems(path)
    assert [p.split(" ")[0] for p in found] == [
        "supervisor.health_checks.interval", "supervisor.health_checks.probe_timeout", "supervisor.restart.backoff_initial"
    ]
    assert all("greater than 0" in p for p in found)


# -- paths -----------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "deploy"
    path = servers_yaml(folder, workspace="ws", state_dir=".metasup", safety_rules_file="rules/safety.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sup = load_config(path).supervisor
    assert sup.workspace == folder / "ws"
    assert sup.state_dir == folder / ".metasup"
    assert sup.safety_rules_file == folder / "rules" / "safety.yaml"
    assert load_config(path).source == path


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "somewhere" / "ws"
    sup = load_config(servers_yaml(tmp_path / "cfg", workspace=str(target))).supervisor
    assert sup.workspace == target


# -- environment -----------------------------------------------------------------------


def test_env_references_are_expanded_from_the_supervisors_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METASUP_TEST_SECRET", "s3cret")
    path = servers_yaml(tmp_path, {"name": "a", "command": "x", "env": {"TOKEN": "Bearer ${METASUP_TEST_SECRET}", "PLAIN": "$HOME"}})
    env = load_config(path).supervisor.mcp_servers[0].env
    assert env == {"TOKEN": "Bearer s3cret", "PLAIN": "$HOME"}  # only ${NAME} is a reference


def test_an_env_reference_to_an_unset_variable_names_the_key_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METASUP_TEST_UNSET", raising=False)
    path = servers_yaml(tmp_path, {"name": "a", "command": "x", "env": {"K": "${METASUP_TEST_UNSET}"}})
    (problem,) = problems(path)
    assert problem.startswith("supervisor.mcp_servers[0].env (line ")
    assert problem.endswith("${METASUP_TEST_UNSET} is not set in the supervisor's environment")


# -- servers and namespaces ------------------------------------------------------------


def test_python_means_the_interpreter_running_the_supervisor(tmp_path: Path) -> None:
    config = load_config(servers_yaml(tmp_path, {"name": "a", "command": "python"}, {"name": "b", "command": "node"}))
    a, b = config.supervisor.mcp_servers
    assert (a.executable, b.executable) == (sys.executable, "node")


def test_the_namespace_defaults_to_the_name_made_name_safe_and_may_be_empty(tmp_path: Path) -> None:
    path = servers_yaml(
        tmp_path,
        {"name": "dynamic thinking.v2", "command": "x"},
        {"name": "bare", "command": "x", "namespace": ""},
        {"name": "also-bare", "command": "x", "namespace": ""},
    )
    spaces = [s.exposed_namespace for s in load_config(path).supervisor.mcp_servers]
    assert spaces == ["dynamic_thinking_v2", "", ""]


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ([{"name": "a", "namespace": "x__y"}], "server 'a': namespace 'x__y' cannot contain '__' (the separator)"),
        ([{"name": "a__b"}], "server 'a__b': namespace 'a__b' cannot contain '__'"),
        ([{"name": "a", "namespace": "x y"}], "server 'a': namespace 'x y' may only use A-Z a-z 0-9 _ -"),
        (
            [{"name": "a", "namespace": "n"}, {"name": "b", "namespace": "n"}],
            "servers 'a' and 'b' share the namespace 'n': give one of them its own `namespace`",
        ),
        ([{"name": "a"}, {"name": "b", "namespace": "a"}], "servers 'a' and 'b' share the namespace 'a'"),
    ],
)
def test_namespace_rules_are_enforced_with_the_servers_named(
    tmp_path: Path, servers: list[dict[str, str]], message: str
) -> None:
    (problem,) = problems(servers_yaml(tmp_path, *({"command": "x", **s} for s in servers)))
    assert problem.startswith("supervisor.mcp_servers (line ") and message in problem


# -- errors name the key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("supervisor:\n  min_runtim: 1s\n", "supervisor.min_runtim (line 2): unknown key: remove it or check its spelling"),
        (
            "supervisor:\n  mcp_servers:\n    - name: a\n      comand: x\n",
            "supervisor.mcp_servers[0].comand (line 4): unknown key",
        ),
        ("supervisor:\n  mcp_servers:\n    - name: a\n", "supervisor.mcp_servers[0].command (line 3): required key is missing"),
        ("supervisor:\n  mcp_servers:\n    - {name: a, command: ' '}\n", "supervisor.mcp_servers[0].command (line 3): command is empty"),
        (
            "supervisor:\n  mcp_servers:\n    - {name: a, command: x}\n    - {name: a, command: y}\n",
            "supervisor.mcp_servers (line 2): two servers are named 'a': server names must be unique",
        ),
        ("supervisor:\n  max_failures: 0\n", "supervisor.max_failures (line 2): Input should be greater than or equal to 1"),
        ("supervisor:\n  mcp_servers:\n    - name: a\n      command: [x\n", "line 5, column 1: not valid YAML"),
        ("- a list\n", "the file must be a mapping with a top-level `supervisor:` key"),
        ("", "the file must be a mapping with a top-level `supervisor:` key"),
    ],
)
def test_each_fault_is_reported_with_the_key_that_caused_it(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(write(tmp_path, text))
    assert any(problem.startswith(expected) for problem in found), found


def test_every_fault_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "supervisor:\n  min_runtime: soon\n  colour: blue\n  mcp_servers:\n    - name: a\n")
    found = problems(path)
    assert sorted(p.split(" ")[0] for p in found) == [
        "supervisor.colour", "supervisor.mcp_servers[0].command", "supervisor.min_runtime"
    ]
    assert str(path) in str(ConfigError(path, found))


def test_a_missing_file_is_a_config_error_saying_so(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == ["cannot read the file: No such file or directory"]


def test_the_effective_config_is_plain_json_with_defaults_filled_in(tmp_path: Path) -> None:
    config = load_config(servers_yaml(tmp_path, {"name": "a", "command": "x"}))
    effective = json.loads(json.dumps(effective_config(config)))
    server = effective["supervisor"]["mcp_servers"][0]
    assert server["restart_on_failure"] is True and server["stop_timeout"] == 5.0
    assert effective["supervisor"]["health_checks"]["failure_threshold"] == 3
    assert effective["supervisor"]["workspace"] == str(tmp_path)


def test_two_servers_that_would_share_a_resource_address_are_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, """\
supervisor:
  mcp_servers:
    - {name: x.y, command: python, namespace: ""}
    - {name: x_y, command: python, namespace: ""}
""")
    with pytest.raises(ConfigError, match=r"'x.y' and 'x_y' would both address their resources as metasup://ns/x_y/"):
        load_config(path)


# -- the state folder and data (the ownership model) -------------------------------------


def test_the_state_folder_defaults_to_beside_a_config_that_lies_outside_the_workspace(tmp_path: Path) -> None:
    sup = load_config(servers_yaml(tmp_path / "deploy", workspace="ws")).supervisor
    assert sup.state_dir == tmp_path / "deploy" / ".metasup"


def test_the_state_folder_defaults_to_the_state_home_when_the_config_is_inside_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    repo = tmp_path / "my repo"
    sup = load_config(servers_yaml(repo, workspace=".")).supervisor
    assert sup.state_dir is not None and sup.state_dir.parent == tmp_path / "state-home" / "metasup"
    assert sup.state_dir.name.startswith("my_repo-")
    other = load_config(servers_yaml(tmp_path / "other", workspace=".")).supervisor
    assert other.state_dir != sup.state_dir, "keyed by the workspace path"


def test_a_state_folder_inside_the_workspace_is_refused_with_what_to_do(tmp_path: Path) -> None:
    [problem] = problems(servers_yaml(tmp_path, workspace=".", state_dir=".metasup"))
    assert problem.startswith("supervisor.state_dir:") and "inside the workspace" in problem
    assert "remove `state_dir`" in problem


def test_data_paths_are_read_as_given(tmp_path: Path) -> None:
    sup = load_config(servers_yaml(tmp_path, workspace="ws", data_paths=["notes.json", "data/"])).supervisor
    assert sup.data_paths == ["notes.json", "data/"]


def test_the_shipped_example_declares_its_notes_as_data_and_keeps_state_outside_the_workspace() -> None:
    sup = load_config(Path(__file__).resolve().parents[1] / "servers.yaml").supervisor
    assert "notes.json" in sup.data_paths
    assert sup.state_dir is not None and sup.workspace not in [sup.state_dir, *sup.state_dir.parents]
