"""The control channel: wire format (pure) and the shim's threaded Unix-socket server."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumem_shim.channel import ChannelServer, check_socket_path
from cumem_shim.elastic import ElasticKV
from cumem_shim.errors import ProtocolError, ShimConfigError
from cumem_shim.fake import FakeDevice
from cumem_shim.freelist import SlotFreeList
from cumem_shim.pages import mha_layout
from cumem_shim.protocol import (
    GetStatus,
    SetLimit,
    handle,
    parse_request,
    request_json,
    status_from_json,
)

LAYOUT = mha_layout(granularity=2 << 20, page_size=1, size=100_000, layers=2, heads=4, head_dim=64)


def make_kv() -> ElasticKV:
    kv = ElasticKV(LAYOUT, FakeDevice(), 0, 2 * LAYOUT.block_bytes)
    kv.attach(SlotFreeList(LAYOUT))
    return kv


def test_requests_parse_and_round_trip() -> None:
    assert parse_request(b'{"op":"status"}') == GetStatus()
    req = parse_request(b'{"op":"set_limit","bytes":5,"revision":2,"id":"a"}\n')
    assert req == SetLimit(5, 2, "a")
    assert parse_request(json.dumps(request_json(req)).encode()) == req


@pytest.mark.parametrize(
    "line, message",
    [
        (b"nope", "not a JSON line"),
        (b"[1]", "JSON object"),
        (b'{"op":"grow"}', "unknown op 'grow'"),
        (b'{"op":"set_limit","bytes":-1,"revision":1}', "`bytes` must be an integer >= 0"),
        (b'{"op":"set_limit","bytes":1,"revision":0}', "`revision` must be an integer >= 1"),
        (b'{"op":"set_limit","bytes":true,"revision":1}', "`bytes`"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_request(line)
    out = json.loads(handle(line, make_kv()))
    assert out["ok"] is False and message.split("'")[0] in out["error"]["message"]


def test_handle_set_limit_then_status() -> None:
    kv = make_kv()
    out = json.loads(handle(b'{"op":"set_limit","bytes":1000000000,"revision":3,"id":7}', kv))
    assert out["ok"] and out["applied"] and out["id"] == 7
    assert out["accepted"] == {"bytes": 1000000000, "revision": 3}
    stale = json.loads(handle(b'{"op":"set_limit","bytes":1,"revision":2}', kv))
    assert stale["applied"] is False and stale["accepted"]["revision"] == 3
    kv.available()  # the scheduler applies it on its next iteration
    st = status_from_json(json.loads(handle(b'{"op":"status"}', kv))["status"])
    assert st.revision == 3 and st.limit_bytes == 1000000000
    with pytest.raises(ProtocolError, match="lacks"):
        status_from_json({"mapped_bytes": 1})


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="shim", dir="/tmp"))  # short: sun_path is 108 bytes
    yield d
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def _ask(path: Path, *lines: bytes) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"".join(lines))
        f = s.makefile("rb")
        return [json.loads(f.readline()) for line in lines if line.strip()]


def test_server_answers_many_requests_on_one_connection(sock_dir: Path) -> None:
    path = sock_dir / "kv.sock"
    server = ChannelServer(str(path), make_kv()).start()
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        out = _ask(path, b'{"op":"status"}\n', b"\n", b"garbage\n", b'{"op":"set_limit","bytes":0,"revision":1}\n')
        assert [o["ok"] for o in out] == [True, False, True]  # a blank line gets no answer
        assert out[2]["applied"]
        assert _ask(path, b'{"op":"status"}\n')[0]["ok"]  # a second connection
    finally:
        server.close()
    assert not path.exists()


def test_stale_socket_is_replaced_and_other_files_are_not(sock_dir: Path) -> None:
    stale = sock_dir / "old.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    ChannelServer(str(stale), make_kv()).close()
    regular = sock_dir / "file"
    regular.write_text("x")
    with pytest.raises(ShimConfigError, match="is not a socket"):
        ChannelServer(str(regular), make_kv())


def test_socket_path_is_checked() -> None:
    with pytest.raises(ShimConfigError, match="1-107 bytes"):
        check_socket_path("/tmp/" + "x" * 200)
    with pytest.raises(ShimConfigError, match="does not exist"):
        check_socket_path("/nonexistent-dir-chimera/kv.sock")
