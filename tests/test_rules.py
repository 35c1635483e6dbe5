"""Change-set validation against a hostile corpus, on a real workspace with real symlinks."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from metasup_mcp.safety.rules import (
    ChangePolicy,
    ChangeSetError,
    FileChange,
    SafetyRule,
    SafetyRulesError,
    is_protected,
    load_safety_rules,
    parse_changes,
    validate_changes,
)
from metasup_mcp.safety.workspace import Workspace, WorkspaceError


@pytest.fixture(autouse=True)
def _pinned(pinned_git: None) -> None:
    """Every test here runs git with a pinned identity and no user or system config."""


def w(path: str, content: str = "x\n") -> dict[str, Any]:
    return {"path": path, "content": content}


def d(path: str) -> dict[str, Any]:
    return {"path": path, "delete": True}


@dataclass
class Case:
    id: str
    raw: Any
    rule: str  # "malformed": parse_changes must raise ChangeSetError
    policy: dict[str, Any] = field(default_factory=dict)


HOSTILE = [
    Case("empty set", [], "empty_change_set"),
    Case("absolute etc", [w("/etc/passwd")], "absolute_path"),
    Case("absolute into sibling", [w("/tmp/outside/pwn.txt")], "absolute_path"),
    Case("windows drive", [w("C:/Windows/win.ini")], "absolute_path"),
    Case("dotdot", [w("../outside/pwn.txt")], "parent_escape"),
    Case("dotdot in the middle", [w("src/../../outside/pwn.txt")], "parent_escape"),
    Case("dotdot back to root", [w("src/..")], "parent_escape"),
    Case("nul byte", [w("a\x00b.txt")], "control_character"),
    Case("newline", [w("evil\nname.txt")], "control_character"),
    Case("terminal escape", [w("\x1b[31mred.txt")], "control_character"),
    Case("backslash dotdot", [w("..\\outside\\pwn.txt")], "backslash"),
    Case("backslash separator", [w("src\\app.py")], "backslash"),
    Case("leading dot slash", [w("./src/app.py")], "non_canonical"),
    Case("double slash", [w("src//app.py")], "non_canonical"),
    Case("trailing slash", [w("src/")], "non_canonical"),
    Case("git config", [w(".git/config")], "git_dir"),
    Case("git upper case hook", [w(".GIT/hooks/pre-commit")], "git_dir"),
    Case("git mixed case in a subfolder", [w("sub/.Git/config")], "git_dir"),
    Case("git itself", [w(".git")], "git_dir"),
    Case("delete git index", [d(".git/index")], "git_dir"),
    Case("git trailing dot", [w(".git./config")], "git_dir"),
    Case("git 8.3 short name", [w("GIT~1/config")], "git_dir"),
    Case("git ntfs stream", [w(".git::$INDEX_ALLOCATION/config")], "git_dir"),
    Case("git fullwidth dot", [w("\uff0egit/config")], "git_dir"),
    Case("git zero width space", [w(".gi\u200bt/config")], "invisible_character"),
    Case("right to left override", [w("src/app\u202eyp.txt")], "invisible_character"),
    Case("no-break space", [w("servers\u00a0.yaml")], "invisible_character"),
    Case("trailing space", [w("servers.yaml ")], "ambiguous_name"),
    Case("trailing dot", [w("notes.")], "ambiguous_name"),
    Case("symlinked dir to outside", [w("escape_dir/pwn.txt")], "symlink_escape"),
    Case("symlinked file to outside", [w("escape_file")], "symlink_escape"),
    Case("delete symlinked file to outside", [d("escape_file")], "symlink_escape"),
    Case("nested symlink to outside", [w("src/up/pwn.txt")], "symlink_escape"),
    Case("symlink loop", [w("loop_a/x.txt")], "symlink_escape"),
    Case("symlink into git", [w("gitlink/config")], "git_dir"),
    Case("symlink into protected dir", [w("cfglink/safety_rules.yaml")], "protected"),
    Case("write through inner dir symlink", [w("inner_link/new.py")], "symlink_path"),
    Case("write onto inner file symlink", [w("readme_link")], "symlink_path"),
    Case("protected file", [w("servers.yaml")], "protected"),
    Case("protected file in upper case", [w("SERVERS.YAML")], "protected"),
    Case("protected fullwidth lookalike", [w("\uff53\uff45\uff52\uff56\uff45\uff52\uff53.yaml")], "protected"),
    Case("protected folder content", [w("backend/supervisor/main.py")], "protected"),
    Case("protected folder name as file", [w("Backend/Supervisor")], "protected"),
    Case("delete in protected folder", [d("backend/supervisor/main.py")], "protected"),
    Case("protected glob", [w("deps/poetry.lock")], "protected"),
    Case("state folder", [w(".metasup/journal.json")], "protected"),
    Case("supervisor package", [w("metasup_pkg/__init__.py")], "protected"),
    Case("outside writable paths", [w("docs/new.md")], "not_writable", {"writable_paths": ["src/"]}),
    Case("one byte too large", [w("big.txt", "x" * ((1 << 20) + 1))], "file_too_large"),
    Case("multibyte too large", [w("big.txt", "\u00e9" * 600_000)], "file_too_large"),
    Case("too many files", [w(f"f{i}.txt") for i in range(101)], "too_many_files"),
    Case("too many for a small limit", [w("a.txt"), w("b.txt")], "too_many_files", {"max_files": 1}),
    Case("duplicate path", [w("a.txt"), w("a.txt", "y")], "duplicate_path"),
    Case("duplicate by case", [w("Notes.txt"), w("notes.TXT")], "duplicate_path"),
    Case("delete missing", [d("missing.txt")], "delete_missing"),
    Case("delete directory", [d("docs")], "delete_directory"),
    Case("write onto directory", [w("docs")], "target_is_directory"),
    Case("parent is a file", [w("README.md/x.txt")], "parent_not_directory"),
    Case("file and folder at once", [w("pkg"), w("pkg/mod.py")], "path_conflict"),
    Case("safety rule python", [w("src/run.py", "import os\nos.system('rm -rf ~')\n")], "safety_rule"),
    Case("safety rule shell", [w("scripts/clean.sh", "echo bye\nrm -rf /\n")], "safety_rule"),
    Case("safety rule glob ignores case", [w("SRC/RUN.PY", "os.system('x')")], "safety_rule"),
    Case("name too long", [w("a" * 256)], "path_too_long"),
    Case("lone surrogate content", [w("x.txt", "\ud800")], "bad_encoding"),
    Case("file key not a string", [{"file": 1, "content": "x"}], "malformed"),
    Case("filename without contents", [{"filename": "a.py"}], "malformed"),
    Case("content and delete", [{"path": "a", "content": "x", "delete": True}], "malformed"),
    Case("contents as list", [{"filename": "a", "contents": ["x"]}], "malformed"),
    Case("two path keys", [{"path": "a", "file": "b", "content": "x"}], "malformed"),
    Case("delete as string", [{"path": "a", "delete": "yes"}], "malformed"),
    Case("unknown mode key", [{"path": "a.py", "content": "x", "mode": 0o777}], "malformed"),
    Case("unknown encoding key", [{"file": "a.py", "content": "eA==", "encoding": "base64"}], "malformed"),
    Case("entry is a string", ["a.py"], "malformed"),
    Case("content and contents", [{"path": "a", "content": "x", "contents": "y"}], "malformed"),
    Case("not a list", {"path": "a", "content": "x"}, "malformed"),
    Case("empty file key", [{"file": "", "content": "x"}], "malformed"),
]

VALID = [
    Case("path and content", [w("src/new.py", "print('hi')\n")], ""),
    Case("seed file form in new folders", [{"file": "storage/cache.go", "content": "package storage\n"}], ""),
    Case("metamorph filename form", [{"filename": "docs/guide.md", "contents": "# Guide\n"}], ""),
    Case("delete a file", [d("README.md")], ""),
    Case("unicode name", [w("donn\u00e9es/caf\u00e9.txt", "ok\n")], ""),
    Case("delete an inner symlink", [d("readme_link")], ""),
    Case("inside writable paths", [w("src/x.py")], "", {"writable_paths": ["src/"]}),
    Case("exactly at the limits", [w(f"f{i}.txt") for i in range(99)] + [w("big.txt", "x" * (1 << 20))], ""),
]


def _populate(root: Path, outside: Path) -> None:
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch\n")
    for rel, text in {
        "README.md": "# ws\n",
        "src/app.py": "print('app')\n",
        "docs/index.md": "docs\n",
        "config/safety_rules.yaml": "[]\n",
        "servers.yaml": "supervisor: {}\n",
        "backend/supervisor/main.py": "# core\n",
        ".metasup/audit.jsonl": "",
        "metasup_pkg/__init__.py": "",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    links = {
        "escape_dir": "../outside",
        "escape_file": "../outside/secret.txt",
        "src/up": "../../outside",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
        "gitlink": ".git",
        "cfglink": "config",
        "inner_link": "src",
        "readme_link": "README.md",
    }
    for rel, target in links.items():
        os.symlink(target, root / rel)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Workspace]:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    _populate(root, outside)
    ws = Workspace.open_or_init(root, ["/.metasup/"])
    return root, outside, ws


def _policy(root: Path, **overrides: Any) -> ChangePolicy:
    base: dict[str, Any] = dict(
        protected_paths=["servers.yaml", "config/safety_rules.yaml", ".git/", "backend/supervisor/", "*.lock"],
        always_protected=[root / ".metasup", root / "metasup_pkg", root.parent / "elsewhere.yaml"],
        safety_rules=[
            SafetyRule(paths="*.py", deny=r"\bos\.system\(", message="no shelling out from Python"),
            SafetyRule(paths="scripts/*.sh", deny=r"rm\s+-rf\s+/(\s|$)", message="never wipe the root"),
        ],
    )
    return ChangePolicy(**{**base, **overrides})


def _tree_digest(top: Path, skip: Path | None = None) -> dict[str, str]:
    """Every entry under `top` (symlinks not followed) with a digest of what it holds."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        if skip is not None and here == skip:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            p = here / name
            if p == skip:
                continue
            rel = p.relative_to(top).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _run_case(case: Case, root: Path) -> list[str]:
    """Rule names the case produced ("malformed" when parsing refused it)."""
    try:
        changes = parse_changes(case.raw)
    except ChangeSetError:
        return ["malformed"]
    return [v.rule for v in validate_changes(changes, _policy(root, **case.policy), root)]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_every_hostile_change_set_is_refused_with_its_rule(case: Case, world: tuple[Path, Path, Workspace]) -> None:
    root, _, _ = world
    assert case.rule in _run_case(case, root)


@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_valid_change_sets_are_accepted_and_written(case: Case, world: tuple[Path, Path, Workspace]) -> None:
    root, _, ws = world
    changes = parse_changes(case.raw)
    assert validate_changes(changes, _policy(root, **case.policy), root) == []
    ws.apply(changes)
    for change in changes:
        target = root / change.path
        if change.delete:
            assert not os.path.lexists(target)
        else:
            assert target.read_text(encoding="utf-8") == change.content


@pytest.mark.parametrize("case", HOSTILE + VALID, ids=[c.id for c in HOSTILE + VALID])
def test_no_byte_lands_outside_the_workspace_or_in_git(case: Case, world: tuple[Path, Path, Workspace]) -> None:
    root, _, ws = world
    outside_before, git_before = _tree_digest(root.parent, skip=root), _tree_digest(root / ".git")
    if not _run_case(case, root):
        ws.apply(parse_changes(case.raw))
    assert _tree_digest(root.parent, skip=root) == outside_before
    assert _tree_digest(root / ".git") == git_before


@pytest.mark.parametrize("case", [c for c in HOSTILE if c.rule != "malformed"], ids=lambda c: c.id)
def test_apply_alone_still_keeps_writes_out_of_git_and_the_outside(case: Case, world: tuple[Path, Path, Workspace]) -> None:
    root, _, ws = world
    outside_before, git_before = _tree_digest(root.parent, skip=root), _tree_digest(root / ".git")
    try:
        ws.apply(parse_changes(case.raw))
    except WorkspaceError:
        pass  # refusing is fine; writing somewhere it must not is not
    assert _tree_digest(root.parent, skip=root) == outside_before
    assert _tree_digest(root / ".git") == git_before


def test_violation_messages_name_the_path_and_what_to_do(world: tuple[Path, Path, Workspace]) -> None:
    root, _, _ = world
    [v] = validate_changes([FileChange("SERVERS.yaml", "x")], _policy(root), root)
    assert (v.rule, v.path) == ("protected", "SERVERS.yaml")
    assert "servers.yaml" in v.message and "protected" in v.message
    [v] = validate_changes([FileChange("src/run.py", "a\nos.system('x')\n")], _policy(root), root)
    assert "no shelling out" in v.message and "line 2" in v.message


def test_malformed_entries_are_named_by_their_index() -> None:
    with pytest.raises(ChangeSetError, match=r"changes\[1\].*needs 'content'") as info:
        parse_changes([w("ok.txt"), {"file": "a.py"}])
    assert info.value.index == 1


def test_is_protected_answers_for_the_watcher(world: tuple[Path, Path, Workspace]) -> None:
    root, _, _ = world
    policy = _policy(root)
    assert is_protected("servers.yaml", policy, root)
    assert is_protected("Backend/Supervisor/main.py", policy, root)
    assert is_protected(".metasup/audit.jsonl", policy, root)
    assert is_protected("cfglink/safety_rules.yaml", policy, root)
    assert is_protected("../outside/secret.txt", policy, root)  # malformed: fail safe
    assert not is_protected("src/app.py", policy, root)
    assert not is_protected("backend/supervisor_notes.md", policy, root)


def test_safety_rules_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- paths: '*.py'\n  deny: 'eval\\('\n  message: no eval\n")
    [rule] = load_safety_rules(path)
    assert rule.paths == "*.py" and rule.pattern.search("x = eval(y)")
    path.write_text("")
    assert load_safety_rules(path) == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- paths: *.py\n  deny: x\n  message: m\n", "quote globs"),
        ("- paths: '*.py'\n  deny: x\n", "rule 1 (line 1): missing ['message']"),
        ("- {paths: a, deny: x, message: m}\n- paths: b\n  deny: '('\n  message: m\n", "rule 2 (line 2)"),
        ("paths: x\n", "expected a list"),
        ("- paths: a\n  deny: x\n  message: m\n  severity: high\n", "unknown ['severity']"),
    ],
    ids=["unquoted star", "missing key", "bad regex", "not a list", "unknown key"],
)
def test_safety_rule_files_with_mistakes_get_clear_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(SafetyRulesError) as info:
        load_safety_rules(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_a_missing_safety_rules_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    with pytest.raises(SafetyRulesError, match="cannot read"):
        load_safety_rules(tmp_path / "nope.yaml")
