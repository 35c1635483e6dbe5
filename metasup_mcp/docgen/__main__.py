"""`python -m metasup_mcp.docgen [--check] [--docs DIR]`: regenerate (or check) the reference pages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metasup_mcp.docgen import DOCS, stale_pages, write_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metasup_mcp.docgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is out of date")
    parser.add_argument("--docs", type=Path, default=DOCS, help=f"the docs folder (default: {DOCS})")
    args = parser.parse_args(argv)
    if not args.docs.is_dir():
        print(f"{args.docs} is not a folder: run from a source checkout or pass --docs", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_pages(args.docs)
        for path in stale:
            print(f"{path} is out of date: run python -m metasup_mcp.docgen", file=sys.stderr)
        return 1 if stale else 0
    for path in write_pages(args.docs):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
