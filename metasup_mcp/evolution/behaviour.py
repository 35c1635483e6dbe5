"""Verification by behaviour: the agent's `verify` calls and the replay of read-only calls.

A `verify` item is `{tool, arguments, expect, match}`: `tool` is the exposed name
(`<namespace>__<tool>`), `expect` a tool result (`content`, `structuredContent`, `isError`),
`match` `subset` (the default: every key and list item given in `expect` is in the result) or
`exact`. Without `expect`, the call must only not be an error (`{isError: false}`).

Replay keeps, per tool annotated `readOnlyHint: true`, a bounded sample of successful calls
(arguments and result) made while the workspace was at last good, in the state folder; after
a change it calls up to `replay.max_calls` of them again and compares (`exact`, or `shape`:
the same keys and value types), per tool as `replay.tools` says.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from metasup_mcp.config import ReplaySettings
from metasup_mcp.safety.journal import atomic_write

logger = logging.getLogger(__name__)

ReplayMode = Literal["exact", "shape", "off"]
SETTLE_TIMEOUT = 5.0  # bound on waiting for the restarted servers' tools to be listed again
EVIDENCE_CHARS = 1500  # of each JSON value quoted as evidence
FLUSH_INTERVAL = 2.0  # seconds between writes of new replay samples


class VerifyCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1)
    arguments: dict[str, Any] = {}
    expect: dict[str, Any] = {"isError": False}
    match: Literal["subset", "exact"] = "subset"


def normalized(result: dict[str, Any]) -> dict[str, Any]:
    """A tool result as compared: `isError` always present, protocol bookkeeping dropped."""
    out = {k: v for k, v in result.items() if k not in ("_meta", "resultType")}
    out["isError"] = bool(out.get("isError", False))
    return out


def is_subset(expected: Any, actual: Any) -> bool:
    """Every key of an expected object is in the actual one with a matching value; a list matches
    when it has the same length and each item matches; anything else must be equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            is_subset(e, a) for e, a in zip(expected, actual, strict=True)
        )
    # 1 == 1.0 matches, but `true` never matches 1 (Python says True == 1).
    return expected == actual and isinstance(expected, bool) == isinstance(actual, bool)


def matches(call: VerifyCall, result: dict[str, Any]) -> bool:
    actual = normalized(result)
    if call.match == "exact":
        return normalized(call.expect) == actual
    return is_subset(call.expect, actual)


def shape(value: Any) -> Any:
    """The structure of a JSON value: object keys with their shapes, a list's first item's shape."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def same_behaviour(mode: ReplayMode, recorded: dict[str, Any], replayed: dict[str, Any]) -> bool:
    before, after = normalized(recorded), normalized(replayed)
    if mode == "shape":
        return shape(before) == shape(after)
    return before == after


def replay_mode(settings: ReplaySettings, tool: str) -> ReplayMode:
    for pattern, mode in settings.tools.items():
        if fnmatch.fnmatchcase(tool, pattern):
            return mode
    return settings.mode


class ReplaySamples:
    """Recorded read-only calls: `{tool: [{arguments, result}]}`, at most `samples_per_tool` each."""

    def __init__(self, path: Path, settings: ReplaySettings) -> None:
        self.path = path
        self.settings = settings
        try:
            data = json.loads(path.read_text())
            self._samples: dict[str, list[dict[str, Any]]] = {
                str(tool): [s for s in samples if isinstance(s, dict) and "result" in s]
                for tool, samples in data.items() if isinstance(samples, list)
            }
        except FileNotFoundError:
            self._samples = {}
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("ignoring unreadable replay samples %s: %s", path, exc)
            self._samples = {}
        self._dirty = False

    def observe(self, tool: str, arguments: dict[str, Any] | None, result: dict[str, Any]) -> None:
        """Keep a successful call (newest wins for the same arguments; oldest dropped past the bound)."""
        if result.get("isError") or replay_mode(self.settings, tool) == "off":
            return
        sample = {"arguments": arguments or {}, "result": normalized(result)}
        samples = self._samples.setdefault(tool, [])
        for index, old in enumerate(samples):
            if old["arguments"] == sample["arguments"]:
                if old["result"] == sample["result"]:
                    return
                del samples[index]
                break
        samples.append(sample)
        del samples[: -self.settings.samples_per_tool]
        self._dirty = True  # written by `flush`, off the call's path

    def clear(self) -> None:
        self._samples = {}
        self._dirty = True

    async def flush(self) -> None:
        """Write the samples to the state folder if they changed since the last write."""
        if self._dirty:
            self._dirty = False
            await anyio.to_thread.run_sync(self._save, json.dumps(self._samples).encode())

    async def keep_flushed(self, interval: float = FLUSH_INTERVAL) -> None:
        try:
            while True:
                await anyio.sleep(interval)
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.flush()  # what was sampled since the last write, at shutdown

    def chosen(self, tools: frozenset[str] | set[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Up to `max_calls` samples of `tools`, taken in turn across tools (newest first)."""
        queues = {t: list(reversed(self._samples.get(t, []))) for t in sorted(tools)
                  if replay_mode(self.settings, t) != "off"}
        picked: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        while len(picked) < self.settings.max_calls and any(queues.values()):
            for tool, queue in queues.items():
                if queue and len(picked) < self.settings.max_calls:
                    sample = queue.pop(0)
                    picked.append((tool, sample["arguments"], sample["result"]))
        return picked

    def _save(self, data: bytes) -> None:
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            logger.warning("could not save replay samples to %s: %s", self.path, exc)


class BehaviourCheck:
    """Runs a change's `verify` calls, then the replay, against the restarted servers."""

    def __init__(
        self,
        call: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]],
        read_only_tools: Callable[[Sequence[str]], frozenset[str]],
        settled: Callable[[], bool],
        samples: ReplaySamples,
    ) -> None:
        self._call = call
        self._read_only_tools = read_only_tools
        self._settled = settled
        self.samples = samples

    async def run(
        self, verify: Sequence[VerifyCall], restarted: Sequence[str]
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """What each call found, and the first failure as (trigger `behaviour:<tool>`, evidence)."""
        with anyio.move_on_after(SETTLE_TIMEOUT):  # the restarted servers' tools listed again
            while not self._settled():
                await anyio.sleep(0.02)
        await self.samples.flush()
        found: list[dict[str, Any]] = []
        for call in verify:
            result = await self._call(call.tool, call.arguments)
            ok = matches(call, result)
            found.append({"kind": "verify", "tool": call.tool, "ok": ok})
            if not ok:
                return found, _failure(call.tool, call.arguments, f"expected ({call.match})", call.expect, result)
        for tool, arguments, recorded in self.samples.chosen(self._read_only_tools(restarted)):
            mode = replay_mode(self.samples.settings, tool)
            result = await self._call(tool, arguments)
            ok = same_behaviour(mode, recorded, result)
            found.append({"kind": "replay", "tool": tool, "mode": mode, "ok": ok})
            if not ok:
                return found, _failure(tool, arguments, f"recorded at last good (replay: {mode})", recorded, result)
        return found, None


def _failure(tool: str, arguments: dict[str, Any], label: str, expected: Any, actual: dict[str, Any]) -> tuple[str, str]:
    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)[:EVIDENCE_CHARS]

    evidence = (
        f"{tool}({dump(arguments)}) behaved differently\n"
        f"{label}: {dump(expected)}\nactual: {dump(normalized(actual))}"
    )
    return f"behaviour:{tool}", evidence
