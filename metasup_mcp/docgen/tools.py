"""docs/tools.md from the supervisor's MCP surface: `mcp_server.TOOLS`, its resources and prompts.

Each tool's arguments come from its pydantic model's JSON schema, so the page lists exactly
what `tools/list` advertises.
"""

from __future__ import annotations

from typing import Any

from metasup_mcp import surface_content as content
from metasup_mcp.mcp_server import TOOLS

INTRO = """\
# Tool reference

Generated from the supervisor's MCP surface (`metasup_mcp/mcp_server.py`,
`metasup_mcp/surface_content.py`) by `python -m metasup_mcp.docgen`; `tests/test_docs.py`
fails when this page and the code differ.

Every tool returns structured JSON (`structuredContent`) plus a one-line text summary. A
failure a person can act on is a tool error (`isError: true`) whose text says what to do,
and whose structured content is `{"error": <the same text>, ...}`. The children's tools,
prompts and resources appear beside these as `<namespace>__<tool>`, `<namespace>__<prompt>`
and `metasup://ns/<namespace>/<original URI>` (see `docs/gateway.md`).
"""


def render_tools() -> str:
    out = [INTRO, "## Tools", ""]
    for tool in TOOLS:
        out += [f"### `{tool.name}`", "", tool.description, ""]
        out += _arguments(tool.definition().input_schema)
    out += ["## Resources", "", "| URI | type | what |", "|---|---|---|"]
    for resource in content.RESOURCES:
        out.append(f"| `{resource.uri}` | {resource.mime_type} | {resource.description} |")
    for template in content.TEMPLATES:
        out.append(f"| `{template.uri_template}` | {template.mime_type} | {template.description} |")
    out += ["", "## Prompts", "", "| prompt | arguments | what |", "|---|---|---|"]
    for prompt in content.PROMPTS:
        arguments = ", ".join(
            f"`{a.name}`" + ("" if a.required else "?") for a in (prompt.arguments or [])
        ) or "—"
        out.append(f"| `{prompt.name}` | {arguments} | {_cell(prompt.description or '')} |")
    return "\n".join(out) + "\n"


def _arguments(schema: dict[str, Any]) -> list[str]:
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return ["No arguments.", ""]
    required = set(schema.get("required", []))
    lines = ["| argument | type | default | description |", "|---|---|---|---|"]
    for name, spec in properties.items():
        default = "required" if name in required else f"`{_json(spec.get('default'))}`"
        lines.append(f"| `{name}` | {_schema_type(spec)} | {default} | {_cell(spec.get('description', ''))} |")
    return [*lines, ""]


def _schema_type(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " or ".join(_schema_type(option) for option in spec["anyOf"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(spec.get('items', {}))}"
    bounds = [f"{symbol} {spec[key]}" for key, symbol in (("minimum", "≥"), ("maximum", "≤")) if key in spec]
    if "minLength" in spec:
        bounds.append(f"at least {spec['minLength']} long")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
