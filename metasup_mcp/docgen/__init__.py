"""The reference pages generated from the code: docs/configuration.md and docs/tools.md.

    python -m metasup_mcp.docgen            # rewrite both pages
    python -m metasup_mcp.docgen --check    # exit 1 naming each page that differs

`tests/test_docs.py` runs the check, so a model or tool changed without regenerating fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metasup_mcp.docgen.configuration import render_configuration
from metasup_mcp.docgen.tools import render_tools

DOCS = Path(__file__).resolve().parents[2] / "docs"

PAGES: dict[str, Callable[[], str]] = {
    "configuration.md": render_configuration,
    "tools.md": render_tools,
}


def stale_pages(docs: Path = DOCS) -> list[Path]:
    """The generated pages under `docs` whose text differs from what the code generates now."""
    return [
        docs / name for name, render in PAGES.items()
        if not (docs / name).exists() or (docs / name).read_text(encoding="utf-8") != render()
    ]


def write_pages(docs: Path = DOCS) -> list[Path]:
    """Regenerate every page under `docs`; returns the pages that changed."""
    changed = stale_pages(docs)
    for path in changed:
        path.write_text(PAGES[path.name](), encoding="utf-8")
    return changed
