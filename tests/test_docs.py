"""The generated reference pages match the code they are generated from.

When one fails: `python -m metasup_mcp.docgen` regenerates docs/configuration.md and
docs/tools.md; commit the result.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metasup_mcp.config import ServerConfig, SupervisorConfig
from metasup_mcp.docgen import DOCS, PAGES
from metasup_mcp.docgen.configuration import render_configuration
from metasup_mcp.mcp_server import TOOLS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", list(PAGES))
def test_the_generated_page_matches_the_code(page: str) -> None:
    on_disk = (DOCS / page).read_text(encoding="utf-8")
    assert on_disk == PAGES[page](), f"docs/{page} is out of date: run `python -m metasup_mcp.docgen` and commit it"


def test_every_configuration_key_is_documented_with_a_type_and_a_description() -> None:
    page = render_configuration()
    models = [SupervisorConfig, ServerConfig, *_models_below(SupervisorConfig)]
    for model in models:
        for name in model.model_fields:
            rows = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
            assert rows, f"{model.__name__}.{name} is missing from docs/configuration.md"
            assert all(row.rstrip(" |").split(" | ")[-1].strip() for row in rows), (
                f"{model.__name__}.{name} has no description: give it a comment on its line in config.py, "
                "a Field(description=...), or a line in metasup_mcp/docgen/descriptions.py"
            )


def test_every_supervisor_tool_is_in_the_tool_reference() -> None:
    page = (DOCS / "tools.md").read_text(encoding="utf-8")
    for tool in TOOLS:
        assert f"### `{tool.name}`" in page


def test_the_check_command_exits_1_naming_a_stale_page(tmp_path: Path) -> None:
    for name in PAGES:
        (tmp_path / name).write_text("stale\n")
    run = [sys.executable, "-m", "metasup_mcp.docgen", "--docs", str(tmp_path)]
    stale = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "configuration.md is out of date" in stale.stderr
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([*run, "--check"], capture_output=True, timeout=60).returncode == 0


def _models_below(model: type) -> list[type]:
    from metasup_mcp.docgen.configuration import _sections

    return [m for _, m in _sections("supervisor", model, set())]



def test_a_key_added_with_a_comment_is_described_by_it() -> None:
    from pydantic import BaseModel

    from metasup_mcp.docgen.configuration import _line_comments

    class Sample(BaseModel):
        inline: int = 1  # said on its line
        # said above it,
        # over two lines
        above: int = 2
        bare: int = 3

    assert _line_comments(Sample) == {"inline": "said on its line", "above": "said above it, over two lines"}
