"""Textkit MCP server: small, deterministic text utilities.

Run over stdio: `python -u textkit.py`. Self-contained on purpose (no package imports):
it gets copied into a workspace folder and run from there.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import sys
import unicodedata
from typing import Literal

from pydantic import BaseModel

from mcp.server import MCPServer

log = logging.getLogger("textkit")
mcp = MCPServer("textkit", version="1.0", instructions="Count, slugify, diff, hash and mine text for URLs.")

# Algorithms every Python build has and whose hexdigest needs no length (unlike shake_*).
Algorithm = Literal[
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512", "blake2b", "blake2s"
]
URL_RE = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
TRAILING = ".,;:!?'\""
CLOSERS = {")": "(", "]": "[", "}": "{"}


class WordCount(BaseModel):
    words: int
    unique_words: int
    characters: int
    lines: int


class Digest(BaseModel):
    algorithm: str
    hexdigest: str


@mcp.tool()
def word_count(text: str) -> WordCount:
    """Count words (runs of letters/digits, apostrophes allowed), distinct words, characters and lines."""
    words = re.findall(r"\w+(?:['’]\w+)*", text)
    return WordCount(
        words=len(words),
        unique_words=len({w.casefold() for w in words}),
        characters=len(text),
        lines=len(text.splitlines()),
    )


@mcp.tool()
def slugify(text: str) -> str:
    """Lower-case ASCII slug, words joined by '-' (accents folded: 'Crème brûlée!' -> 'creme-brulee')."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _unbalanced_closer(url: str) -> bool:
    last = url[-1]
    return last in CLOSERS and url.count(CLOSERS[last]) < url.count(last)


@mcp.tool()
def extract_urls(text: str) -> list[str]:
    """http(s) URLs in order of first appearance, without trailing sentence punctuation."""
    found: list[str] = []
    for match in URL_RE.finditer(text):
        url = match.group()
        # Drop punctuation that ends the sentence, and closing brackets the URL never opened
        # ("(see https://x.org/a_(b))." keeps the inner pair).
        while url and (url[-1] in TRAILING or _unbalanced_closer(url)):
            url = url[:-1]
        if url not in found:
            found.append(url)
    return found


@mcp.tool()
def diff_lines(a: str, b: str, context: int = 3) -> str:
    """Unified diff turning text `a` into text `b` (empty when they are equal)."""
    lines = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), "a", "b", n=context)
    # A last line without newline would glue onto the next diff line.
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


@mcp.tool()
def hash_text(text: str, algorithm: Algorithm = "sha256") -> Digest:
    """Hex digest of the UTF-8 encoded text."""
    return Digest(algorithm=algorithm, hexdigest=hashlib.new(algorithm, text.encode()).hexdigest())


@mcp.prompt()
def rewrite(text: str, tone: str) -> str:
    """Ask the model to rewrite `text` in the given tone, keeping its meaning."""
    return (
        f"Rewrite the text below in a {tone} tone. Keep every fact, name and number; "
        f"keep roughly the same length; reply with the rewritten text only.\n\n---\n{text}"
    )


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s textkit %(levelname)s %(message)s")
    log.info("textkit ready")
    mcp.run()
