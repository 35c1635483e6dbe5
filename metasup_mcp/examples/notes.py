"""Notes MCP server: small titled, tagged notes kept in a JSON file.

The file is `notes.json` in the working directory unless `NOTES_FILE` names another
path. Run over stdio: `python -u notes.py`. Self-contained on purpose (no package
imports): it gets copied into a workspace folder and run from there.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError

log = logging.getLogger("notes")
NOTES_FILE = Path(os.environ.get("NOTES_FILE", "notes.json")).resolve()
# Sync tools run on worker threads: serialise each read-modify-write of the file.
_lock = threading.Lock()

mcp = MCPServer("notes", version="1.0", instructions="Keep, find and delete short notes.")


class CorruptNotesFile(ToolError, ResourceError):
    """Both bases, so tools and resources alike report the message instead of a generic crash."""


class Note(BaseModel):
    id: int
    title: str
    body: str
    tags: list[str] = Field(default_factory=list)
    created: str


def _load() -> list[Note]:
    try:
        raw = NOTES_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        return [Note.model_validate(n) for n in json.loads(raw)]
    except ValueError as exc:
        # Refuse rather than start afresh: the next save would destroy the user's notes.
        raise CorruptNotesFile(f"{NOTES_FILE} is not a valid notes file ({exc}); fix or move it") from exc


def _save(notes: list[Note]) -> None:
    """Write via a temp file in the same folder and os.replace, so a crash never leaves half a file."""
    NOTES_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=NOTES_FILE.parent, prefix=".notes-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump([n.model_dump() for n in notes], f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, NOTES_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@mcp.tool()
def add_note(title: str, body: str, tags: list[str] | None = None) -> Note:
    """Add a note and return it with its new id."""
    with _lock:
        notes = _load()
        note = Note(
            id=max((n.id for n in notes), default=0) + 1,
            title=title,
            body=body,
            tags=sorted({t.strip().lower() for t in tags or [] if t.strip()}),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        _save([*notes, note])
    log.info("added note %d", note.id)
    return note


@mcp.tool()
def list_notes(tag: str | None = None) -> list[Note]:
    """List all notes, or only those carrying `tag`."""
    with _lock:
        notes = _load()
    return [n for n in notes if tag is None or tag.strip().lower() in n.tags]


@mcp.tool()
def search_notes(query: str) -> list[Note]:
    """Notes whose title, body or tags contain `query` (case-insensitive)."""
    q = query.casefold()
    with _lock:
        notes = _load()
    return [n for n in notes if q in n.title.casefold() or q in n.body.casefold() or any(q in t for t in n.tags)]


@mcp.tool()
def delete_note(id: int) -> Note:
    """Delete the note with this id and return what was deleted."""
    with _lock:
        notes = _load()
        gone = next((n for n in notes if n.id == id), None)
        if gone is None:
            raise ToolError(f"no note with id {id}; list_notes shows the ids")
        _save([n for n in notes if n.id != id])
    log.info("deleted note %d", id)
    return gone


@mcp.resource("notes://all", mime_type="application/json", description="Every note, as JSON.")
def all_notes() -> str:
    with _lock:
        return json.dumps([n.model_dump() for n in _load()], indent=2, ensure_ascii=False)


@mcp.resource("notes://{id}", mime_type="application/json", description="One note by id, as JSON.")
def one_note(id: int) -> str:
    with _lock:
        note = next((n for n in _load() if n.id == id), None)
    if note is None:
        raise ResourceNotFoundError(f"no note with id {id}")
    return note.model_dump_json(indent=2)


@mcp.prompt()
def summarize_notes(tag: str | None = None) -> str:
    """Ask the model to summarise the notes (optionally only one tag's)."""
    notes = list_notes(tag)
    if not notes:
        return "There are no notes to summarise. Say so briefly."
    listing = "\n\n".join(f"## {n.title} (#{n.id}; tags: {', '.join(n.tags) or 'none'})\n{n.body}" for n in notes)
    scope = f"tagged '{tag}'" if tag else "all"
    return (
        f"Summarise these notes ({scope}, {len(notes)} in total). Group related ones, "
        f"list open actions, and cite note ids.\n\n{listing}"
    )


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s notes %(levelname)s %(message)s")
    log.info("notes file: %s", NOTES_FILE)
    mcp.run()
