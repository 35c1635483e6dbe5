"""A slice of `bench/http_load.py`: 8 concurrent streamable-HTTP sessions call a child's tool
while the child restarts every 2 s; no call hangs and every error is structured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TEST_MARK

pytestmark = pytest.mark.anyio

_spec = importlib.util.spec_from_file_location("http_load", ROOT / "bench" / "http_load.py")
assert _spec is not None and _spec.loader is not None
http_load = importlib.util.module_from_spec(_spec)
sys.modules["http_load"] = http_load  # its dataclasses look their module up while being built
_spec.loader.exec_module(http_load)

SESSIONS, CALLS, PAUSE = 8, 40, 0.05  # about 5 s of calls on 2 cores: two restarts or more


async def test_eight_http_sessions_through_restarts_every_two_seconds_never_hang_and_every_error_is_structured(
    tmp_path: Path, test_token: str
) -> None:
    port = http_load.free_port()
    process = http_load.start_supervisor(http_load.write_config(tmp_path, {TEST_MARK: test_token}), port)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await http_load.wait_ready(url, process)
        result = await http_load.drive(url, SESSIONS, CALLS, restart_every=2.0, pause=PAUSE)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(result.summary())
    assert result.calls == SESSIONS * CALLS
    assert result.hung == 0 and result.unstructured == [] and result.wrong == 0, result.summary()
    assert result.restarts >= 1 and result.ok > 0, result.summary()
    assert set(result.structured_errors) <= {"unavailable", "child_died"}, result.summary()
