"""Line framing of peers' pipes: bounded memory whatever a peer writes."""

from __future__ import annotations

from metasup_mcp.aio import LineSplitter


def test_lines_are_split_across_chunks():
    splitter = LineSplitter(limit=100)
    assert splitter.feed(b'{"a"') == []
    assert splitter.feed(b': 1}\n{"b": 2}\n{"c"') == [b'{"a": 1}', b'{"b": 2}']
    assert splitter.rest() == b'{"c"'


def test_a_peer_writing_without_newlines_is_never_buffered_beyond_the_limit():
    splitter = LineSplitter(limit=1024)
    for _ in range(100):  # 6.4 MB without a newline
        assert splitter.feed(b"x" * 65536) == []
        assert splitter._size <= 1024
    assert splitter.feed(b"\n{}\n") == [b"{}"], "the over-long line is dropped, the next one is whole"
    assert splitter.overlong == 1 and splitter.rest() == b""


def test_log_lines_over_the_limit_are_cut_not_dropped():
    splitter = LineSplitter(limit=5, truncate=True)
    assert splitter.feed(b"short\nmuch too long for it\nok\n") == [b"short", b"much ", b"ok"]
    assert splitter.overlong == 1
