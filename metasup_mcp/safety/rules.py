"""Change-set validation: everything is checked before a byte is written.

Decisions where the brief left room (they are part of the contract):

* Paths are workspace-relative, ``/``-separated and canonical: no empty, ``.`` or ``..``
  component, no leading ``/`` and no trailing ``/``. Non-canonical paths are refused
  rather than normalised, so the path that was validated is the path that gets written.
* Backslashes are refused: on POSIX they are legal file-name characters, on Windows they
  are separators (``..\\x``), so one string would name different files on different hosts.
* Control characters (Cc) are refused, and so are invisible or look-alike characters
  (format, private-use, unassigned, surrogates, line/paragraph separators, any space but
  U+0020); a component may not start or end with whitespace nor end with ``.`` (Windows
  and some filesystems drop those, aliasing another name).
* ``.git`` is refused in any component and any letter case, after NFKC folding, with the
  NTFS aliases git itself refuses (``.git.``, ``git~1``, ``.git::$INDEX_ALLOCATION``).
* Protected/writable patterns and safety-rule globs match case-insensitively after NFKC
  folding: on case-insensitive filesystems ``SERVERS.YAML`` *is* ``servers.yaml``, and a
  false refusal is cheap while a false acceptance is not. A pattern protects the path it
  names and everything below it, compared whole component by component (``backend/sup``
  does not protect ``backend/supervisor/``; write ``backend/sup*`` for that); a trailing
  ``/`` marks a folder and changes nothing else. Globs use ``fnmatch`` (``*`` crosses
  ``/``); a glob without ``/`` matches the base name at any depth, like ``.gitignore``.
* Symlinks: a path whose existing components (or the target itself) are symlinks is
  refused: ``symlink_escape`` if it resolves outside the workspace, ``symlink_path``
  otherwise (write the real path; `Workspace.apply` never follows links). Deleting a
  symlink that stays inside the workspace is allowed: only the link is removed.
* Duplicates compare case-insensitively; one path may not be an ancestor of another in
  the same set (``path_conflict``).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ChangePolicy",
    "ChangeSetError",
    "FileChange",
    "SafetyRule",
    "SafetyRulesError",
    "Violation",
    "is_git_path",
    "is_protected",
    "matches_pattern",
    "load_safety_rules",
    "parse_changes",
    "validate_changes",
]

_PATH_KEYS = ("path", "file", "filename")
_CONTENT_KEYS = ("content", "contents")
_KNOWN_KEYS = frozenset((*_PATH_KEYS, *_CONTENT_KEYS, "delete"))
# Categories that render as nothing or as something else: the classic spoofing tools.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
_MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux and macOS
_MAX_PATH_BYTES = 4096  # PATH_MAX on Linux


class ChangeSetError(ValueError):
    """A raw change entry is malformed; `index` is its position (None: not a list)."""

    rule = "malformed"

    def __init__(self, index: int | None, problem: str) -> None:
        where = "changes" if index is None else f"changes[{index}]"
        super().__init__(f"{where}: {problem}")
        self.index = index
        self.problem = problem


class SafetyRulesError(ValueError):
    """The safety-rules file cannot be used; the message names the file and entry."""


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file to write (`content`) or delete (`delete=True`, `content=None`)."""

    path: str
    content: str | None = None
    delete: bool = False

    def __post_init__(self) -> None:
        if self.delete != (self.content is None):
            raise ValueError("a FileChange has content or delete=True, exactly one of them")


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class SafetyRule:
    """Refuse content matching `deny` (a regex) in files matching `paths` (a glob)."""

    paths: str
    deny: str
    message: str
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.deny, re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"deny regex {self.deny!r} does not compile: {exc}") from exc
        object.__setattr__(self, "pattern", compiled)


@dataclass(frozen=True)
class ChangePolicy:
    protected_paths: list[str] = field(default_factory=list)
    writable_paths: list[str] = field(default_factory=list)  # empty: all but protected
    max_file_bytes: int = 1 << 20
    max_files: int = 100
    safety_rules: list[SafetyRule] = field(default_factory=list)
    # Absolute paths (config file, state folder, the supervisor's package): protected
    # when they lie inside the workspace, whatever protected_paths says.
    always_protected: list[Path] = field(default_factory=list)


# --- parsing ---------------------------------------------------------------------------


def parse_changes(raw: Any) -> list[FileChange]:
    """Accept `{path, content}`, `{path, delete: true}`, `{file, content}` and
    `{filename, contents}`; raise `ChangeSetError` naming the first bad entry."""
    if not isinstance(raw, list):
        raise ChangeSetError(None, f"must be a list of objects, got {type(raw).__name__}")
    return [_parse_entry(i, entry) for i, entry in enumerate(raw)]


def _parse_entry(i: int, entry: Any) -> FileChange:
    if not isinstance(entry, dict):
        raise ChangeSetError(i, f"must be an object like {{path, content}}, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in _KNOWN_KEYS)
    if unknown:
        # An unknown key may change meaning (encoding, mode): refuse rather than ignore.
        raise ChangeSetError(i, f"unknown key(s) {unknown}; allowed: {sorted(_KNOWN_KEYS)}")
    path_keys = [k for k in _PATH_KEYS if k in entry]
    content_keys = [k for k in _CONTENT_KEYS if k in entry]
    if len(path_keys) != 1:
        problem = "has no path" if not path_keys else f"has several path keys {path_keys}"
        raise ChangeSetError(i, f"{problem}; give exactly one of 'path', 'file', 'filename'")
    if len(content_keys) > 1:
        raise ChangeSetError(i, f"has both {content_keys}; give one")
    path = entry[path_keys[0]]
    if not isinstance(path, str) or not path:
        raise ChangeSetError(i, f"'{path_keys[0]}' must be a non-empty string, got {path!r}")
    delete = entry.get("delete", False)
    if not isinstance(delete, bool):
        raise ChangeSetError(i, f"'delete' must be true or false, got {delete!r}")
    if delete:
        if content_keys:
            raise ChangeSetError(i, f"{path!r} has both 'delete: true' and '{content_keys[0]}'")
        return FileChange(path=path, content=None, delete=True)
    if not content_keys:
        raise ChangeSetError(i, f"{path!r} needs 'content' (the whole new file) or 'delete: true'")
    content = entry[content_keys[0]]
    if not isinstance(content, str):
        raise ChangeSetError(i, f"'{content_keys[0]}' of {path!r} must be a string, got {type(content).__name__}")
    return FileChange(path=path, content=content)


def load_safety_rules(path: Path) -> list[SafetyRule]:
    """Read a YAML list of `{paths, deny, message}`; errors name the file, entry and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise SafetyRulesError(f"cannot read safety rules {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        hint = " (quote globs that start with '*')" if "alias" in str(exc) else ""
        raise SafetyRulesError(f"{path} is not valid YAML{hint}: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise SafetyRulesError(f"{path}: expected a list of {{paths, deny, message}}, got {type(data).__name__}")
    lines = [n.start_mark.line + 1 for n in node.value] if isinstance(node, yaml.SequenceNode) else []
    rules: list[SafetyRule] = []
    for i, item in enumerate(data):
        where = f"{path}: rule {i + 1}" + (f" (line {lines[i]})" if i < len(lines) else "")
        if not isinstance(item, dict):
            raise SafetyRulesError(f"{where}: expected a mapping with paths, deny, message")
        keys = set(item)
        if keys != {"paths", "deny", "message"}:
            missing, extra = sorted({"paths", "deny", "message"} - keys), sorted(map(str, keys - {"paths", "deny", "message"}))
            raise SafetyRulesError(f"{where}: missing {missing} / unknown {extra}; keys are paths, deny, message")
        for key in ("paths", "deny", "message"):
            if not isinstance(item[key], str) or not item[key]:
                raise SafetyRulesError(f"{where}: '{key}' must be a non-empty string")
        try:
            rules.append(SafetyRule(paths=item["paths"], deny=item["deny"], message=item["message"]))
        except ValueError as exc:
            raise SafetyRulesError(f"{where}: {exc}") from exc
    return rules


# --- matching --------------------------------------------------------------------------


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _is_git_component(component: str) -> bool:
    folded = _fold(component).split(":", 1)[0].rstrip(". ")
    return folded in (".git", "git~1")


def is_git_path(rel_path: str) -> bool:
    """Does any component of `rel_path` name git's own folder (any case or NTFS alias)?"""
    return any(_is_git_component(p) for p in rel_path.split("/"))


def _pattern_matches(rel: str, pattern: str) -> bool:
    """Does `pattern` name `rel` or one of its ancestors (case-folded, whole components)?"""
    pat = _fold(pattern.strip()).removeprefix("./").strip("/")
    if not pat:
        return False
    parts = _fold(rel).split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    if not any(ch in pat for ch in "*?["):
        return pat in candidates
    if "/" not in pat:
        return any(fnmatch.fnmatchcase(part, pat) for part in parts)
    alt = pat[3:] if pat.startswith("**/") else None
    return any(fnmatch.fnmatchcase(c, pat) or (alt is not None and fnmatch.fnmatchcase(c, alt)) for c in candidates)


def matches_pattern(rel: str, pattern: str) -> bool:
    """Does `pattern` cover `rel`, as a protected path would (case-folded after NFKC, a folder
    covers what is below it, a glob without ``/`` matches a name at any depth)? Used wherever a
    pattern guards paths (protected_paths, approval.human_for), so none is easier to sidestep."""
    return _pattern_matches(rel, pattern)


def _glob_matches(rel: str, glob: str) -> bool:
    """Safety-rule glob against the file itself (not its ancestors)."""
    pat, folded = _fold(glob.strip()).removeprefix("./"), _fold(rel)
    if "/" not in pat:
        return fnmatch.fnmatchcase(folded.rsplit("/", 1)[-1], pat)
    return fnmatch.fnmatchcase(folded, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(folded, pat[3:]))


def _always_protected_rels(policy: ChangePolicy, root_real: Path) -> list[str]:
    rels = []
    for p in policy.always_protected:
        try:
            rel = Path(p).resolve().relative_to(root_real).as_posix()
        except ValueError:
            continue  # outside the workspace: escapes are refused anyway
        if rel != ".":
            rels.append(rel)
    return rels


def _protection(rel: str, policy: ChangePolicy, always: Sequence[str]) -> str | None:
    """The pattern protecting `rel`, or None."""
    for pattern in policy.protected_paths:
        if _pattern_matches(rel, pattern):
            return pattern
    for literal in always:
        if _pattern_matches(rel, re.sub(r"([*?\[])", r"[\1]", literal)):
            return literal
    return None


# --- path checks -----------------------------------------------------------------------


def _shape_violation(path: str) -> tuple[str, str] | None:
    """Problems visible in the string alone (no filesystem access for these)."""
    if not path:
        return "empty_path", "the path is empty; give a path relative to the workspace root"
    for ch in path:
        if unicodedata.category(ch) == "Cc":
            return "control_character", f"the path contains control character U+{ord(ch):04X}; remove it"
    for ch in path:
        cat = unicodedata.category(ch)
        if cat in _INVISIBLE_CATEGORIES or (cat == "Zs" and ch != " "):
            return "invisible_character", (
                f"the path contains invisible or look-alike character U+{ord(ch):04X} "
                f"({unicodedata.name(ch, 'unnamed')}); use plain characters"
            )
    if "\\" in path:
        return "backslash", "the path contains '\\'; separate folders with '/'"
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return "absolute_path", "absolute or drive paths are refused; give a path relative to the workspace root"
    parts = path.split("/")
    if ".." in parts:
        return "parent_escape", "'..' is refused (it can climb out of the workspace); give the direct path"
    if any(p in ("", ".") for p in parts):
        canonical = "/".join(p for p in parts if p not in ("", "."))
        return "non_canonical", f"write the path without empty or '.' components: {canonical!r}"
    if is_git_path(path):
        return "git_dir", "paths inside .git (any case or alias) are refused; git state is not editable"
    for p in parts:
        if p != p.strip() or p.endswith("."):
            return "ambiguous_name", f"component {p!r} starts/ends with whitespace or ends with '.'; rename it"
    if len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES or any(
        len(p.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES for p in parts
    ):
        return "path_too_long", f"path over {_MAX_PATH_BYTES} bytes or a name over {_MAX_COMPONENT_BYTES} bytes"
    return None


def _inside(path: Path, root_real: Path) -> bool:
    return path == root_real or root_real in path.parents


def _disk_violations(change: FileChange, root: Path, root_real: Path) -> tuple[list[Violation], str | None]:
    """Symlink, type and existence checks; returns violations and the resolved rel path."""
    rel, out = change.path, []
    parts = rel.split("/")
    cur, exists = root, True
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            exists = False
            break
        except OSError as exc:
            out.append(Violation("unreadable_path", rel, f"cannot inspect {cur.relative_to(root)}: {exc.strerror}"))
            return out, None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            try:
                target = cur.resolve()
            except (OSError, RuntimeError):
                out.append(Violation("symlink_escape", rel, f"{cur.relative_to(root)} is a symlink that cannot be resolved (loop?)"))
                return out, None
            shown = cur.relative_to(root).as_posix()
            if not _inside(target, root_real):
                out.append(Violation("symlink_escape", rel, f"{shown} is a symlink to {target}, outside the workspace"))
                return out, None
            if not (last and change.delete):
                real = target.relative_to(root_real).as_posix()
                out.append(Violation("symlink_path", rel, f"{shown} is a symlink to {real}; use the real path instead"))
        elif not last and not stat.S_ISDIR(st.st_mode):
            out.append(Violation("parent_not_directory", rel, f"{cur.relative_to(root)} is a file, not a folder"))
            return out, None
        elif last and stat.S_ISDIR(st.st_mode):
            rule = "delete_directory" if change.delete else "target_is_directory"
            out.append(Violation(rule, rel, f"{rel} is a folder; delete or write the files inside it one by one"))
        elif last and not stat.S_ISREG(st.st_mode):
            out.append(Violation("target_not_regular", rel, f"{rel} is a fifo, socket or device, not a file; remove it first"))
    if change.delete and not exists:
        out.append(Violation("delete_missing", rel, f"cannot delete {rel}: it does not exist"))
    try:
        real_rel = (root / rel).resolve().relative_to(root_real).as_posix()
    except (OSError, RuntimeError, ValueError):
        real_rel = None
    return out, real_rel


def validate_changes(changes: Sequence[FileChange], policy: ChangePolicy, workspace: Path) -> list[Violation]:
    """Every reason to refuse `changes`; an empty list means they may be written."""
    if not changes:
        return [Violation("empty_change_set", "", "the change set is empty; give at least one file change")]
    out: list[Violation] = []
    if len(changes) > policy.max_files:
        out.append(Violation("too_many_files", "", f"{len(changes)} files in one change; the limit is {policy.max_files}, split it"))
    root = Path(workspace).absolute()
    root_real = root.resolve()
    always = _always_protected_rels(policy, root_real)
    seen: dict[str, str] = {}
    for change in changes:
        out.extend(_check_one(change, policy, root, root_real, always, seen))
    out.extend(_conflicts([c.path for c in changes if _shape_violation(c.path) is None]))
    return out


def _check_one(
    change: FileChange, policy: ChangePolicy, root: Path, root_real: Path, always: Sequence[str], seen: dict[str, str]
) -> Iterable[Violation]:
    rel = change.path
    shape = _shape_violation(rel)
    if shape is not None:
        yield Violation(shape[0], rel, shape[1])
        return
    key = _fold(rel)
    if key in seen:
        alias = "" if seen[key] == rel else f" (also as {seen[key]!r})"
        yield Violation("duplicate_path", rel, f"{rel} appears twice{alias}; merge the changes into one")
    seen.setdefault(key, rel)
    disk, real_rel = _disk_violations(change, root, root_real)
    yield from disk
    for candidate in dict.fromkeys(p for p in (rel, real_rel) if p and p != "."):
        if is_git_path(candidate):
            yield Violation("git_dir", rel, f"{rel} leads into .git ({candidate}); git state is not editable")
        elif (pattern := _protection(candidate, policy, always)) is not None:
            yield Violation("protected", rel, f"{candidate} is protected by {pattern!r}; change the policy by hand if it must change")
    if policy.writable_paths and not any(_pattern_matches(rel, p) for p in policy.writable_paths):
        yield Violation("not_writable", rel, f"{rel} is outside the writable paths {policy.writable_paths}")
    if change.content is None:
        return
    try:
        size = len(change.content.encode("utf-8"))
    except UnicodeEncodeError as exc:
        yield Violation("bad_encoding", rel, f"content of {rel} cannot be UTF-8 encoded at offset {exc.start} (lone surrogate?)")
        return
    if size > policy.max_file_bytes:
        yield Violation("file_too_large", rel, f"{rel} is {size} bytes; the limit is {policy.max_file_bytes}")
        return  # do not run safety regexes over oversized content
    for rule in policy.safety_rules:
        if _glob_matches(rel, rule.paths) and (m := rule.pattern.search(change.content)):
            line = change.content.count("\n", 0, m.start()) + 1
            yield Violation("safety_rule", rel, f"{rule.message} ({rel} line {line} matches {rule.deny!r})")


def _conflicts(paths: Sequence[str]) -> list[Violation]:
    folded = {_fold(p): p for p in paths}
    out = []
    for key, path in folded.items():
        parts = key.split("/")
        for n in range(1, len(parts)):
            ancestor = folded.get("/".join(parts[:n]))
            if ancestor is not None:
                out.append(Violation("path_conflict", path, f"{ancestor} is both a file and a folder of {path} in this change"))
                break
    return out


def is_protected(rel_path: str, policy: ChangePolicy, workspace: Path) -> bool:
    """For the on-disk watcher: may nothing but a person change `rel_path`?

    Malformed paths count as protected (fail safe); symlinks are followed within the workspace.
    """
    if _shape_violation(rel_path) is not None:
        return True
    root_real = Path(workspace).resolve()
    always = _always_protected_rels(policy, root_real)
    candidates = [rel_path]
    try:
        real = (Path(workspace) / rel_path).resolve()
    except (OSError, RuntimeError):
        return True
    if not _inside(real, root_real):
        return True
    candidates.append(real.relative_to(root_real).as_posix())
    return any(
        is_git_path(c) or _protection(c, policy, always) is not None
        for c in candidates
        if c != "."
    )
