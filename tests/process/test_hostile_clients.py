"""Clients that try to take the server with little effort, against `mlapi serve`:
slow and idle connections, a header that never ends, small requests that ask for
huge work, a request path that would forge log lines, and digits that are not
ASCII. Each was reproduced against the server before it was fixed (issue 14,
findings 1, 2, 3, 6 and 7)."""

from __future__ import annotations

import contextlib
import gzip
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import wait_for
from tests.process.conftest import Server

pytestmark = pytest.mark.process
IRIS_ROW = orjson.dumps(
    {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
)


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _reply(sock: socket.socket, timeout_s: float) -> bytes:
    """What the server sends before it closes the connection (or the timeout)."""
    sock.settimeout(timeout_s)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _connections(server: Server, count: int, opening: bytes) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(_address(server), timeout=5)
            if opening:
                sock.sendall(opening)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


SLOW_BODY = (
    b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
)
SLOW_HEADERS = b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def test_slow_and_idle_clients_hold_no_request_slot_and_are_closed_by_deadlines(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        MODEL_PATH=str(DEFAULT_MODEL_PATH),
        MLAPI_MAX_INFLIGHT="50",
        MLAPI_HEADER_TIMEOUT_S="2",
        MLAPI_BODY_TIMEOUT_S="3",
    )
    opened = time.monotonic()
    with (
        _connections(server, 52, SLOW_BODY) as slow_bodies,
        _connections(server, 10, SLOW_HEADERS) as slow_headers,
        _connections(server, 5, b"") as silent,
    ):
        # a body one byte at a time keeps the connection busy, never a request slot
        for sock in slow_bodies[:5]:
            sock.sendall(b" ")
        with httpx.Client(base_url=server.url, timeout=5) as client:
            statuses = [
                client.post("/v2/models/iris/infer", content=IRIS_ROW).status_code
                for _ in range(20)
            ]
        assert time.monotonic() - opened < 2, "the real requests must run while all are held"
        assert statuses == [200] * 20
        body_replies = [_reply(sock, 6) for sock in slow_bodies]
        header_replies = [_reply(sock, 6) for sock in slow_headers]
        silent_replies = [_reply(sock, 6) for sock in silent]
    assert time.monotonic() - opened < 10
    for reply in body_replies:
        assert reply.startswith(b"HTTP/1.1 408"), reply[:120]
        assert b"MLAPI_BODY_TIMEOUT_S" in reply
    for reply in header_replies:
        assert reply.startswith(b"HTTP/1.1 408"), reply[:120]
        assert b"MLAPI_HEADER_TIMEOUT_S" in reply
    assert silent_replies == [b""] * 5  # closed, nothing to answer
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.post("/v2/models/iris/infer", content=IRIS_ROW).status_code == 200
    assert "408" in server.log()  # the timed-out requests are in the access log as 408


def test_an_idle_kept_alive_connection_is_closed_after_its_timeout(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH), MLAPI_KEEPALIVE_TIMEOUT_S="1")
    with socket.create_connection(_address(server), timeout=5) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        started = time.monotonic()
        reply = _reply(sock, 5)  # the answer, then the close
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 200")
    assert 0.8 < waited < 3, waited


def test_connections_past_the_cap_are_refused_and_served_again_once_freed(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        MODEL_PATH=str(DEFAULT_MODEL_PATH), MLAPI_MAX_CONNECTIONS="4", MLAPI_BODY_TIMEOUT_S="2"
    )
    with _connections(server, 4, SLOW_BODY):
        with httpx.Client(base_url=server.url, timeout=5) as client:
            refused = client.post("/v2/models/iris/infer", content=IRIS_ROW)
        assert refused.status_code == 503
    with httpx.Client(base_url=server.url, timeout=5) as client:
        wait_for(
            lambda: client.post("/v2/models/iris/infer", content=IRIS_ROW).status_code == 200,
            timeout_s=10,
            what="service after the slow connections closed",
        )


def test_a_header_that_never_ends_is_refused_while_it_is_read(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    before = _rss_mb(server.process.pid)
    sent = 0
    with socket.create_connection(_address(server), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        reply = _reply(sock, 5)
    assert sent < 8 * 1024 * 1024, f"the server read {sent} bytes of one header"
    assert reply.startswith(b"HTTP/1.1 431"), reply[:120]
    assert b"MLAPI_MAX_HEADER_BYTES" in reply
    assert _rss_mb(server.process.pid) - before < 15
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/health").status_code == 200


def _gzip_zeros(rows: int) -> bytes:
    document = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": [0] * rows * 4}
        ]
    }
    return gzip.compress(orjson.dumps(document), 9)


def test_a_small_request_cannot_ask_for_huge_work(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    bomb = _gzip_zeros(4_194_279)
    assert len(bomb) < 64 * 1024  # 32 KB on the wire, 33 MB of JSON once inflated
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        started = time.monotonic()
        response = client.post("/v2/models/iris/infer", content=bomb, headers=headers)
        assert response.status_code == 413, response.text[:200]
        assert "MLAPI_MAX_ELEMENTS" in response.json()["error"]
        assert time.monotonic() - started < 2.5
        text = {
            "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a" * 2_000_000]}]
        }
        response = client.post("/v2/models/iris/infer", json=text)
        assert response.status_code in (400, 413)  # a string where iris takes numbers
        assert client.post("/v2/models/iris/infer", content=IRIS_ROW).status_code == 200


@pytest.mark.parametrize(
    ("rows", "status"),
    [(4_194_279, 413), (262_144, 200)],
    ids=["over the element cap", "at the element cap"],
)
def test_large_requests_never_keep_liveness_waiting(
    start_server: Callable[..., Server], rows: int, status: int
) -> None:
    """Six gzip requests at once, each 33 MB (refused by the element cap) or 8 MB
    (served) of JSON once inflated: the event loop answers /health/live in under a
    second throughout (before: six of the first stalled it for 8 s; then each parse
    of 33 MB held it for 0.4 s, up to 1 s on a busy machine; now the first is refused
    before it is parsed and the longest wait is about 0.07 s)."""
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    body = _gzip_zeros(rows)
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    done = threading.Event()
    waits: list[float] = []

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.get("/health/live").status_code == 200
                waits.append(time.monotonic() - started)
                time.sleep(0.05)

    def heavy(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return client.post("/v2/models/iris/infer", content=body, headers=headers).status_code

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(heavy, range(12)))
    finally:
        done.set()
        prober.join(timeout=15)
    assert statuses == [status] * 12
    assert len(waits) > 5
    assert max(waits) < 1.0, sorted(waits)[-5:]


def test_a_request_path_cannot_forge_log_lines(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH), MLAPI_ACCESS_LOG="all")
    forged = "/v2/models/x%0A04:00:00%20INFO%20%20%20%20mlapi.access:%20FORGED%1B%5B31m/infer"
    with socket.create_connection(_address(server), timeout=5) as sock:
        sock.sendall(
            f"POST {forged} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        )
        assert _reply(sock, 2).startswith(b"HTTP/1.1 404")
    wait_for(lambda: "FORGED" in server.log(), timeout_s=5, what="the access log line")
    log = server.log()
    lines = [line for line in log.splitlines() if "FORGED" in line]
    assert len(lines) == 1
    assert re.match(r"\d\d:\d\d:\d\d INFO +mlapi\.access: POST /v2/models/x\\n", lines[0])
    assert "/v2/models/x\\n04:00:00" in lines[0]
    assert "\\x1b[31m" in lines[0]
    assert "\x1b" not in log


@pytest.mark.parametrize(
    "digits", [b"\xb2", "\uff11\uff12".encode()], ids=["superscript", "fullwidth"]
)
def test_a_binary_header_length_in_other_digits_is_a_400(
    start_server: Callable[..., Server], digits: bytes
) -> None:
    """'²' (one Latin-1 byte) passed str.isdigit() and then failed int(): a 500."""
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    with socket.create_connection(_address(server), timeout=5) as sock:
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Inference-Header-Content-Length: " + digits + b"\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(IRIS_ROW) + IRIS_ROW
        )
        reply = _reply(sock, 5)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"Inference-Header-Content-Length" in reply
    assert "Traceback" not in server.log()
