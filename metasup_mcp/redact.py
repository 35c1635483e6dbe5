"""Keep secrets out of what the supervisor stores and serves.

A child that prints a configured secret (or anything from the supervisor's environment) must
not get it into `server_logs`, proposals, the audit log or `/supervisor/changes`. Every such
text passes through `redact()`, which replaces each known secret value with
`[redacted:NAME]`.

Known secrets are the values of the servers' `env` entries and of the supervisor's own
environment, minus values that cannot be secrets and would only garble logs: short ones
(under `MIN_SECRET_CHARS`), those of well-known non-secret variables (PATH, HOME, ...) and plain
paths, unless the variable's name says secret (KEY, TOKEN, PASSWORD, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Redactor", "install", "looks_secret", "redact", "redact_data", "secrets_from"]

MIN_SECRET_CHARS = 8
_NOT_SECRET = frozenset(
    "PATH HOME PWD OLDPWD SHELL USER LOGNAME LANG LANGUAGE LC_ALL LC_CTYPE TERM TZ TMPDIR SHLVL _ HOSTNAME "
    "VIRTUAL_ENV PYTHONPATH PYTHONUNBUFFERED PYTHONSAFEPATH XDG_RUNTIME_DIR XDG_SESSION_ID DISPLAY COLUMNS LINES "
    "METASUP_INSTANCE".split()
)
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|CREDENTIAL|AUTH|PRIVATE|COOKIE|SESSION|DSN|_URL$", re.IGNORECASE)


def secrets_from(env: Mapping[str, str]) -> dict[str, str]:
    """The values of `env` worth hiding, as {value: name}."""
    found: dict[str, str] = {}
    for name, value in env.items():
        if name in _NOT_SECRET or len(value) < MIN_SECRET_CHARS:
            continue
        if not looks_secret(name) and (value.startswith("/") or value.isdigit()):
            continue
        found.setdefault(value, name)
    return found


class Redactor:
    """Replaces known secret values in text; longest first, so a secret inside another goes too."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self.secrets = dict(secrets or {})
        ordered = sorted(self.secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str, template: str = "[redacted:{name}]") -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: template.format(name=self.secrets[m.group(0)]), text)

    def data(self, value: Any, template: str = "[redacted:{name}]") -> Any:
        """`value` with every string in it (keys too) redacted; JSON-shaped data in, the same out."""
        if isinstance(value, str):
            return self(value, template)
        if isinstance(value, Mapping):
            return {
                self(k, template) if isinstance(k, str) else k: self.data(v, template) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.data(v, template) for v in value]
        return value


def looks_secret(name: str) -> bool:
    """Whether a variable's name says its value is a secret (API_KEY, DB_PASSWORD, ...)."""
    return bool(_SECRET_NAME.search(name))


_active = Redactor(secrets_from(os.environ))


def install(configured_env: Iterable[Mapping[str, str]] = (), environ: Mapping[str, str] | None = None) -> Redactor:
    """Make the secrets of the servers' `env` and of the supervisor's environment the ones hidden."""
    global _active
    secrets = secrets_from(os.environ if environ is None else environ)
    for env in configured_env:
        for value, name in secrets_from(env).items():
            secrets.setdefault(value, name)
    _active = Redactor(secrets)
    return _active


def redact(text: str) -> str:
    return _active(text)


def redact_data(value: Any) -> Any:
    return _active.data(value)
