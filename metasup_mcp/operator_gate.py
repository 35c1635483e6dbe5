"""The operator token: what every operator action (approve/reject a change or a server, reload)
must present, and the gate that checks it.

The token is `approval.operator_token_file` if set, else `METASUP_OPERATOR_TOKEN`. It is compared
in constant time and never stored beside a proposal, shown in status, logged or audited.

Guessing is bounded: a process that can reach an operator door (a same-user child without the
sandbox can reach the loopback status endpoint) could otherwise try tokens as fast as it likes.
After `MAX_WRONG` wrong tokens within `WINDOW_S`, the gate refuses every token, the right one
included (else the guesser would learn when it hit), until the oldest of them leaves the window.
This is sshd's `MaxAuthTries` per window rather than per connection: the guesser can delay the
operator by at most a minute at a time, never get in. A token shorter than `MIN_LENGTH`
characters is refused outright, so a short password cannot be walked through over days.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import deque
from collections.abc import Callable

from metasup_mcp.config import OPERATOR_TOKEN_ENV, ApprovalSettings

MAX_WRONG = 5
WINDOW_S = 60.0
MIN_LENGTH = 16
HOW_TO_MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def operator_token(settings: ApprovalSettings) -> str | None:
    """The configured operator token, or None if there is none (unset, empty or unreadable)."""
    if settings.operator_token_file is not None:
        try:
            token = settings.operator_token_file.read_text().strip()
        except OSError:
            return None
        return token or None
    return os.environ.get(OPERATOR_TOKEN_ENV) or None


class OperatorGate:
    """Checks operator tokens for one supervisor; `problem(given)` is None when `given` may act.

    `settings` is read at each check (a reload may change `approval`); `clock` is in seconds.
    """

    def __init__(self, settings: Callable[[], ApprovalSettings], clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._wrong: deque[float] = deque()

    def problem(self, given: str) -> str | None:
        """Why `given` does not authorize an operator action (a sentence naming what to do), or None."""
        now = self._clock()
        while self._wrong and now - self._wrong[0] >= WINDOW_S:
            self._wrong.popleft()
        if len(self._wrong) >= MAX_WRONG:
            wait = WINDOW_S - (now - self._wrong[0])
            return (f"{MAX_WRONG} wrong operator tokens in the last {WINDOW_S:.0f} s: every token is refused for "
                    f"{wait:.0f} s more (if that was not you, something is guessing it: see decision_refused in "
                    "the audit log)")
        settings = self._settings()
        expected = operator_token(settings)
        if expected is None:
            where = settings.operator_token_file or f"the {OPERATOR_TOKEN_ENV} environment variable"
            return (f"no operator token is configured ({where} is unset or unreadable): set {OPERATOR_TOKEN_ENV} "
                    "in the supervisor's environment or approval.operator_token_file, then restart it")
        if len(expected) < MIN_LENGTH:
            return (f"the configured operator token is {len(expected)} characters, fewer than {MIN_LENGTH}: "
                    f"replace it with a random one ({HOW_TO_MAKE_ONE}); a token file is read at each check, "
                    f"{OPERATOR_TOKEN_ENV} when the supervisor starts")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self._wrong.append(now)
            return "the operator token is wrong"
        return None
