"""The operator gate: the token's length, bounded guessing, and the window reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasup_mcp.approve_cli import operator_token_for
from metasup_mcp.config import ApprovalSettings
from metasup_mcp.config import MIN_TOKEN_LENGTH as MIN_LENGTH
from metasup_mcp.operator_gate import MAX_WRONG, WINDOW_S, OperatorGate
from tests.test_gateway_support import write_config

TOKEN = "k" * MIN_LENGTH


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> OperatorGate:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", TOKEN)
    return OperatorGate(ApprovalSettings, clock)


def test_the_right_token_passes_and_a_wrong_one_is_named_wrong(gate: OperatorGate) -> None:
    assert gate.problem(TOKEN) is None
    assert gate.problem("x" * MIN_LENGTH) == "the operator token is wrong"


def test_after_too_many_wrong_tokens_even_the_right_one_is_refused_until_the_window_passes(
    gate: OperatorGate, clock: Clock
) -> None:
    for _ in range(MAX_WRONG):
        clock.now += 1
        assert gate.problem("guess") == "the operator token is wrong"
    refusal = gate.problem(TOKEN)
    assert refusal is not None and f"refused for {WINDOW_S - MAX_WRONG + 1:.0f} s more" in refusal
    clock.now += WINDOW_S - MAX_WRONG + 1  # the first wrong one leaves the window: one more try
    assert gate.problem(TOKEN) is None


def test_wrong_tokens_spread_wider_than_the_window_never_close_the_gate(gate: OperatorGate, clock: Clock) -> None:
    for _ in range(MAX_WRONG * 3):
        clock.now += WINDOW_S / (MAX_WRONG - 1)
        assert gate.problem("guess") == "the operator token is wrong"
    assert gate.problem(TOKEN) is None


def test_a_short_configured_token_is_refused_with_how_to_make_a_good_one(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", "hunter2")
    refusal = OperatorGate(ApprovalSettings, clock).problem("hunter2")
    assert refusal is not None and f"7 characters, fewer than {MIN_LENGTH}" in refusal and "secrets.token_urlsafe" in refusal


def test_a_token_file_is_read_at_each_check(tmp_path: Path, clock: Clock) -> None:
    token_file = tmp_path / "operator.token"
    gate = OperatorGate(lambda: ApprovalSettings(operator_token_file=token_file), clock)
    assert "no operator token is configured" in (gate.problem(TOKEN) or "")
    token_file.write_text(TOKEN + "\n")
    assert gate.problem(TOKEN) is None


def test_the_command_line_finds_the_token_where_the_configs_supervisor_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`metasup-mcp approve --config` with a token file configured sends the file's token, not a
    stale variable left in the operator's shell."""
    token_file = tmp_path / "operator.token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(tmp_path, [], approval={"operator_token_file": str(token_file)})
    monkeypatch.setenv("METASUP_OPERATOR_TOKEN", "stale-" + TOKEN)
    assert operator_token_for(config) == TOKEN
    assert operator_token_for(tmp_path / "absent.yaml") == "stale-" + TOKEN
