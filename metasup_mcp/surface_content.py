"""The supervisor's own resources and prompts (the children's come through the gateway).

Resources: `metasup://status`, `metasup://audit`, and the templates
`metasup://servers/{name}/log` and `metasup://changes/{id}`. Prompts: `propose`, `expand`
and `edit`, the three stages of a change (Metamorph's proposal → expansion → edit), ending in
the arguments `propose_change` takes.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from metasup_mcp.supervisor import ChangeError, Supervisor, UnknownServer

AUDIT_ENTRIES = 100
_JSON = "application/json"

RESOURCES = [
    types.Resource(
        uri="metasup://status", name="status", mime_type=_JSON,
        description="The supervisor and every child server, as server_status returns them.",
    ),
    types.Resource(
        uri="metasup://audit", name="audit", mime_type=_JSON,
        description=f"The newest {AUDIT_ENTRIES} entries of the hash-chained audit log.",
    ),
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template="metasup://servers/{name}/log", name="server-log", mime_type="text/plain",
        description="The last 500 lines a child server wrote to stderr.",
    ),
    types.ResourceTemplate(
        uri_template="metasup://changes/{id}", name="change", mime_type=_JSON,
        description="One proposal with its stages, checks, reasons and commits.",
    ),
]


def read_resource(supervisor: Supervisor, uri: str) -> types.ReadResourceResult | None:
    """The supervisor's own resource at `uri`; None if it is not one of them."""
    if uri == "metasup://status":
        return _json(uri, supervisor.status())
    if uri == "metasup://audit":
        return _json(uri, {"entries": supervisor.audit_tail(AUDIT_ENTRIES)})
    if uri.startswith("metasup://servers/") and uri.endswith("/log"):
        name = uri.removeprefix("metasup://servers/").removesuffix("/log")
        try:
            lines = supervisor.server_logs(name, 500)
        except UnknownServer as exc:
            raise LookupError(str(exc)) from None
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text="\n".join(lines))]
        )
    if uri.startswith("metasup://changes/"):
        try:
            return _json(uri, supervisor.get_change(uri.removeprefix("metasup://changes/")).model_dump(mode="json"))
        except ChangeError as exc:
            raise LookupError(str(exc)) from None
    return None


def _json(uri: str, value: Any) -> types.ReadResourceResult:
    text = json.dumps(value, indent=1, default=str)
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, mime_type=_JSON, text=text)])


def _argument(name: str, description: str, required: bool = True) -> types.PromptArgument:
    return types.PromptArgument(name=name, description=description, required=required)


PROMPTS = [
    types.Prompt(
        name="propose", description="Stage 1 of a change: a short proposal for a goal.",
        arguments=[_argument("goal", "What the change should achieve")],
    ),
    types.Prompt(
        name="expand", description="Stage 2 of a change: the proposal expanded into concrete steps.",
        arguments=[_argument("proposal", "The one-line proposal from stage 1")],
    ),
    types.Prompt(
        name="edit", description="Stage 3 of a change: the edit itself, as propose_change arguments.",
        arguments=[
            _argument("proposal", "The one-line proposal from stage 1"),
            _argument("steps", "The steps from stage 2, one per line"),
        ],
    ),
]


EDIT_FORMAT = json.dumps({
    "title": "<the proposal>",
    "steps": ["<step 1>", "<step 2>"],
    "changes": [{"path": "<file>", "content": "<the whole new file>"}, {"path": "<file>", "delete": True}],
    "verify": [{"tool": "<namespace>__<tool>", "arguments": {}, "expect": {"structuredContent": {}}, "match": "subset"}],
}, indent=1)
WORKSPACE_FILES_SHOWN = 200


def _change_context(supervisor: Supervisor) -> str:
    """The rules a change is held to now: strategy and its limits, protected paths, the files."""
    strategy = supervisor.changes.strategy()
    limits = strategy.limits
    bounds = ", ".join(
        f"at most {value} {what}" for value, what in ((limits.max_files, "files"), (limits.max_lines, "changed lines"))
        if value is not None
    ) or "no size limit"
    protected = ", ".join(supervisor.settings.protected_paths)
    files, total = supervisor.workspace_files(WORKSPACE_FILES_SHOWN)
    listing = "\n".join(f"  {path}" for path in files) or "  (no files yet)"
    more = f"\n  ... and {total - len(files)} more" if total > len(files) else ""
    return (
        f"Current strategy: {strategy.name} ({strategy.reason}); a change may touch {bounds}.\n"
        f"Protected paths (never changed): {protected}.\n"
        f"Workspace files:\n{listing}{more}"
    )


def get_prompt(supervisor: Supervisor, name: str, arguments: dict[str, str] | None) -> types.GetPromptResult | None:
    """The supervisor's own prompt `name`; None if it is not one of them."""
    if name not in {prompt.name for prompt in PROMPTS}:
        return None
    args = arguments or {}
    missing = [a.name for p in PROMPTS if p.name == name for a in p.arguments or () if a.required and not args.get(a.name)]
    if missing:
        raise LookupError(f"prompt {name!r} needs the argument(s) {', '.join(missing)}")
    context = _change_context(supervisor)
    if name == "propose":
        text = (
            f"Goal: {args['goal']}\n\n"
            "Propose ONE change to the code the supervised MCP servers run that moves toward this goal. "
            "Answer with a single short sentence: what to change and why. Keep it small enough to verify "
            f"on its own; a change that fails is rolled back as a whole.\n\n{context}"
        )
    elif name == "expand":
        text = (
            f"Proposal: {args['proposal']}\n\n"
            "Expand it into concrete, numbered steps. Name every file to create, change or delete (paths "
            "relative to the workspace) and say what each step does. Include the tests that show it works, "
            f"and the tool calls that show the servers still behave (they become `verify`).\n\n{context}"
        )
    else:  # edit
        text = (
            f"Proposal: {args['proposal']}\nSteps:\n{args['steps']}\n\n"
            "Write the edit. Reply with the arguments of the propose_change tool as JSON:\n"
            f"{EDIT_FORMAT}\n"
            "Give whole files, not diffs. The supervisor will validate, commit and verify it (compile, checks, "
            "restart, min_runtime, health, the verify calls, replayed read-only calls, the benchmark) and roll it "
            f"back if anything fails; get_change then shows why.\n\n{context}"
        )
    message = types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))
    return types.GetPromptResult(description=next(p.description for p in PROMPTS if p.name == name), messages=[message])
