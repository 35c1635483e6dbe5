"""A request too large for the stdio wire gets an error answer, not silence."""

from __future__ import annotations

import json
import os

import anyio
import pytest

from metasup_mcp import stdio
from metasup_mcp.config import CHANGE_SET_BUDGET, ConfigError, parse_config
from metasup_mcp.stdio import WireReader, WireWriter, request_id_of

pytestmark = pytest.mark.anyio


def test_the_id_is_found_before_params_or_after_them_and_never_inside() -> None:
    assert request_id_of(b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"a":"xx', b"") == 7
    assert request_id_of(b'{"jsonrpc":"2.0","method":"x","params":{"id":1,"c":"', b'zz"},"id":"r-9"}') == "r-9"
    assert request_id_of(b'{"method":"x","params":{"id":1', b'zzzz') is None


async def test_an_overlong_request_is_answered_with_an_error_naming_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio, "MAX_MESSAGE_BYTES", 4096)
    server_in, client_to_server = os.pipe()
    client_from_server, server_out = os.pipe()
    for fd in (server_in, server_out):
        os.set_blocking(fd, False)
    try:
        reader = WireReader(server_in, answer=WireWriter(server_out))
        big = {"jsonrpc": "2.0", "id": 42, "method": "tools/call",
               "params": {"name": "propose_change", "arguments": {"changes": [{"path": "a", "content": "x" * 10000}]}}}
        small = {"jsonrpc": "2.0", "id": 43, "method": "ping"}
        os.write(client_to_server, (json.dumps(big) + "\n" + json.dumps(small) + "\n").encode())
        with anyio.fail_after(5):
            dropped = await reader.__anext__()
            following = await reader.__anext__()
        assert isinstance(dropped, ValueError)
        assert following.message.id == 43  # the wire goes on
        answer = json.loads(os.read(client_from_server, 65536).decode().splitlines()[0])
        assert answer["id"] == 42 and answer["error"]["code"] == -32600
        assert "wire limit" in answer["error"]["message"] and "split the change" in answer["error"]["message"]
    finally:
        for fd in (client_to_server, server_in, server_out, client_from_server):
            os.close(fd)


def test_max_files_times_max_file_bytes_must_fit_the_wire(tmp_path) -> None:
    text = f"supervisor:\n  max_files: 1000\n  max_file_bytes: {CHANGE_SET_BUDGET // 100}\n"
    with pytest.raises(ConfigError, match="max_files × max_file_bytes.*lower one of them"):
        parse_config(text, tmp_path / "servers.yaml")
    assert parse_config("supervisor: {}\n", tmp_path / "servers.yaml").supervisor.max_file_bytes == 256 * 1024
