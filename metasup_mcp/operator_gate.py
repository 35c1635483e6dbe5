"""The operator token: what every operator action (approve/reject a change or a server, reload)
must present, and the gate that checks it.

The token is `approval.operator_token_file` if set, else `METASUP_OPERATOR_TOKEN`. It is compared
in constant time and never stored beside a proposal, shown in status, logged or audited.

Guessing is bounded: a process that can reach an operator door (a same-user child without the
sandbox can reach the loopback status endpoint) could otherwise try tokens as fast as it likes.
After `MAX_WRONG` wrong tokens within `WINDOW_S`, the gate refuses every token, the right one
included (else the guesser would learn when it hit), until the oldest of them leaves the window.
This is sshd's `MaxAuthTries` per window rather than per connection: the guesser can delay the
operator by at most a minute at a time, never get in. A token shorter than `MIN_TOKEN_LENGTH`
characters is refused outright, so a short password cannot be walked through over days.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import deque
from collections.abc import Callable

from metasup_mcp.config import HOW_TO_MAKE_A_TOKEN, MIN_TOKEN_LENGTH, OPERATOR_TOKEN_ENV, ApprovalSettings

MAX_WRONG = 5
WINDOW_S = 60.0


def operator_token(settings: ApprovalSettings) -> str | None:
    """The configured operator token, or None if there is none (unset, empty or unreadable)."""
    if settings.operator_token_file is not None:
        try:
            token = settings.operator_token_file.read_text().strip()
        except OSError:
            return None
        return token or None
    return os.environ.get(OPERATOR_TOKEN_ENV) or None


class GuessWindow:
    """Wrong guesses within the last `WINDOW_S` seconds; `closed_for()` is how long every guess is
    refused (0.0: open), after `MAX_WRONG` of them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._wrong: deque[float] = deque()

    def closed_for(self) -> float:
        now = self._clock()
        while self._wrong and now - self._wrong[0] >= WINDOW_S:
            self._wrong.popleft()
        return WINDOW_S - (now - self._wrong[0]) if len(self._wrong) >= MAX_WRONG else 0.0

    def wrong(self) -> None:
        self._wrong.append(self._clock())


class OperatorGate:
    """Checks operator tokens for one supervisor; `problem(given)` is None when `given` may act.

    `settings` is read at each check (a reload may change `approval`); `clock` is in seconds.
    """

    def __init__(self, settings: Callable[[], ApprovalSettings], clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._guesses = GuessWindow(clock)

    def problem(self, given: str) -> str | None:
        """Why `given` does not authorize an operator action (a sentence naming what to do), or None."""
        if wait := self._guesses.closed_for():
            return (f"{MAX_WRONG} wrong operator tokens in the last {WINDOW_S:.0f} s: every token is refused for "
                    f"{wait:.0f} s more (if that was not you, something is guessing it: see decision_refused in "
                    "the audit log)")
        settings = self._settings()
        expected = operator_token(settings)
        if expected is None:
            where = settings.operator_token_file or f"the {OPERATOR_TOKEN_ENV} environment variable"
            return (f"no operator token is configured ({where} is unset or unreadable): set {OPERATOR_TOKEN_ENV} "
                    "in the supervisor's environment or approval.operator_token_file, then restart it")
        if len(expected) < MIN_TOKEN_LENGTH:
            return (f"the configured operator token is {len(expected)} characters, fewer than {MIN_TOKEN_LENGTH}: "
                    f"replace it with a random one ({HOW_TO_MAKE_A_TOKEN}); a token file is read at each check, "
                    f"{OPERATOR_TOKEN_ENV} when the supervisor starts")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self._guesses.wrong()
            return "the operator token is wrong"
        return None
