"""docs/configuration.md from the pydantic models of `servers.yaml` (`metasup_mcp.config`).

Every key of every model reachable from `Config` is listed with its type, default, a YAML
example and a description. A description comes from, in order: the field's
`Field(description=...)`, `descriptions.DESCRIPTIONS`, or the comment on (or right above) the
field's line in the model's source, so a key added with a comment is documented without
touching this package.
"""

from __future__ import annotations

import inspect
import io
import re
import textwrap
import tokenize
import types as pytypes
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from metasup_mcp.config import Config, parse_duration, parse_fraction
from metasup_mcp.docgen.descriptions import DESCRIPTIONS, EXAMPLES, INTRO, SECTION_NOTES

_CONSTRAINTS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "at least {} long"}


def render_configuration() -> str:
    """The whole reference page, Markdown, deterministic."""
    out = [INTRO.rstrip() + "\n"]
    supervisor = Config.model_fields["supervisor"].annotation
    assert isinstance(supervisor, type) and issubclass(supervisor, BaseModel)
    for path, model in _sections("supervisor", supervisor, seen=set()):
        out.append(_section(path, model))
    return "\n".join(out)


def _sections(path: str, model: type[BaseModel], seen: set[type]) -> list[tuple[str, type[BaseModel]]]:
    """`(dotted path, model)` for `model` and every model below it, each model once, depth first."""
    seen.add(model)
    found = [(path, model)]
    for name, field in model.model_fields.items():
        for sub, suffix in _models_in(field.annotation):
            if sub not in seen:
                found += _sections(f"{path}.{name}{suffix}", sub, seen)
    return found


def _models_in(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return [(m, "[]" + s) for m, s in _models_in(args[0])]
    if origin is dict:
        return [(m, ".<key>" + s) for m, s in _models_in(args[1])]
    if origin in (Union, pytypes.UnionType, Annotated):
        return [found for arg in args for found in _models_in(arg)]
    return []


def _section(path: str, model: type[BaseModel]) -> str:
    lines = [f"## `{path}`", ""]
    doc = model.__dict__.get("__doc__")  # its own, not BaseModel's
    if doc:
        lines += [inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " "), ""]
    if path in SECTION_NOTES:
        lines += [SECTION_NOTES[path], ""]
    lines += ["| key | type | default | example | description |", "|---|---|---|---|---|"]
    comments = _line_comments(model)
    for name, field in model.model_fields.items():
        key = f"{model.__name__}.{name}"
        description = field.description or DESCRIPTIONS.get(key) or comments.get(name, "")
        row = [f"`{name}`", _type(field), _default(field), _example(name, field, key), description]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def _line_comments(model: type[BaseModel]) -> dict[str, str]:
    """`{field: comment}` from the class source: the comment ending a field's line, else the
    comment lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    inline: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            inline[token.start[0] - 1] = token.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = re.match(r"^    (\w+)\s*:", line)
        if not match or match.group(1) not in model.model_fields:
            continue
        if index in inline and not line.lstrip().startswith("#"):
            found[match.group(1)] = inline[index]
            continue
        above: list[str] = []
        while index - len(above) - 1 >= 0 and lines[index - len(above) - 1].strip().startswith("#"):
            above.append(lines[index - len(above) - 1].strip().lstrip("#").strip())
        if above:
            found[match.group(1)] = " ".join(reversed(above))
    return found


def _is_duration(annotation: Any, field: FieldInfo | None = None) -> bool:
    return _parsed_by(parse_duration, annotation, field)


def _is_fraction(annotation: Any, field: FieldInfo | None = None) -> bool:
    return _parsed_by(parse_fraction, annotation, field)


def _parsed_by(parser: Any, annotation: Any, field: FieldInfo | None = None) -> bool:
    """Whether the type is one of config.py's parsed scalars (Duration, Fraction)."""
    metadata = list(field.metadata if field else []) + list(getattr(annotation, "__metadata__", ()))
    if any(getattr(m, "func", None) is parser for m in metadata):
        return True
    return any(_parsed_by(parser, arg) for arg in get_args(annotation) if arg is not type(None))


def _type(field: FieldInfo) -> str:
    text = _type_name(field.annotation)
    for kind, test in (("duration", _is_duration), ("fraction", _is_fraction)):
        if test(field.annotation, field):
            text = f"{kind} or null" if type(None) in get_args(field.annotation) else kind
    bounds = [
        _CONSTRAINTS[attr].format(value) if "{}" in _CONSTRAINTS[attr] else f"{_CONSTRAINTS[attr]} {value}"
        for m in field.metadata for attr in _CONSTRAINTS if (value := getattr(m, attr, None)) is not None
    ]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return "duration" if _is_duration(annotation) else _type_name(args[0])
    if origin in (Union, pytypes.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(annotation, str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{_yaml_value(_plain(value, field))}`"


def _example(name: str, field: FieldInfo, key: str) -> str:
    if key in EXAMPLES:
        return f"`{EXAMPLES[key]}`"
    if field.is_required() or isinstance(field.get_default(call_default_factory=True), BaseModel):
        return ""
    value = field.get_default(call_default_factory=True)
    if value is None or value == [] or value == {}:
        return ""
    return f"`{name}: {_yaml_value(_plain(value, field))}`"


def _plain(value: Any, field: FieldInfo) -> Any:
    """`value` as YAML would show it: durations with a unit, anything else in its JSON form."""
    if _is_duration(field.annotation, field) and isinstance(value, int | float):
        return _duration_text(float(value))
    if _is_fraction(field.annotation, field) and isinstance(value, int | float):
        return f"{value * 100:g}%"
    try:
        return TypeAdapter(field.annotation).dump_python(value, mode="json", exclude_defaults=True)
    except Exception:  # noqa: BLE001 — a type the adapter cannot take: its own JSON form, or its text
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else str(value)


def _duration_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


def _tidy(value: Any) -> Any:
    """Whole floats as integers (`4096`, not `4096.0`), all the way down."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def _yaml_value(value: Any) -> str:
    value = _tidy(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").removesuffix("...").strip()

