"""The index's unmerged entries and bits, as a savepoint keeps them in a tree of their own."""

from __future__ import annotations

from metasup_mcp.safety.blobs import blob_id
from metasup_mcp.safety.index_extras import IndexExtras, extras_tree_lines, flags_from_ls_files, parse_extras

EMPTY = blob_id(b"")
SHA = "1" * 40


def test_the_ls_files_tags_give_skip_worktree_and_assume_unchanged_and_an_empty_entry_out_of_the_tree_intent_to_add() -> None:
    lines = [f"S 100644 {SHA} 0\ta", f"h 100644 {SHA} 0\tb", f"s 100644 {SHA} 0\tc",
             f"H 100644 {EMPTY} 0\tnew", f"H 100644 {EMPTY} 0\tempty", f"M 100644 {SHA} 2\tconflict", f"H 100644 {SHA} 0\tplain"]
    assert flags_from_ls_files(lines, EMPTY, in_tree={"empty"}) == {
        "a": {"skip-worktree"}, "b": {"assume-unchanged"}, "c": {"skip-worktree", "assume-unchanged"}, "new": {"intent-to-add"},
    }


def test_extras_come_back_from_their_tree_listing_as_they_went_in() -> None:
    extras = IndexExtras([f"100644 {SHA} 1\tdir/x y.py", f"100755 {SHA} 3\tdir/x y.py"], {"a/b": frozenset({"skip-worktree", "intent-to-add"})})
    listing = []
    for line in extras_tree_lines(extras, EMPTY):
        meta, _, path = line.partition("\t")
        mode, sha = meta.split()
        listing.append(f"{mode} blob {sha}\t{path}")
    assert parse_extras(listing) == extras
    assert not IndexExtras([], {})
