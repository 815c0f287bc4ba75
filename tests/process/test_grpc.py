"""gRPC on `mlapi serve` as users start it: SIGTERM with calls in flight (every
accepted call answered, readiness false at once, exit 0) and with a health Watch
open, every worker on the one port, a port already taken, and gRPC turned off."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import free_port, wait_for
from tests.fixtures.grpc import health_of, health_stub, infer, stub
from tests.fixtures.models import write_python_model
from tests.process.conftest import MLAPI, Server, base_env, metric
from tests.process.test_drain import SLOW_MODEL, SLOW_TOML, sigterm_under_load

pytestmark = pytest.mark.process
ROWS = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)


def _listening() -> list[tuple[int, str]]:
    """(port, socket inode) of every TCP socket listening on this machine; gRPC
    listens on an IPv6 socket even for 127.0.0.1 (a v4-mapped address)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return found


def _listeners(port: int) -> int:
    return sum(1 for listening, _ in _listening() if listening == port)


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing (a busy server opens and closes)
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return {port for port, inode in _listening() if inode in inodes}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_answers_every_accepted_grpc_call_and_exits_0(
    start_server: Callable[..., Server], tmp_path: Path, workers: str
) -> None:
    write_python_model(tmp_path / "repo", "slow", SLOW_MODEL, SLOW_TOML)
    server = start_server(
        grpc=True,
        MODEL_PATH=str(tmp_path / "repo"),
        WORKERS=workers,
        MLAPI_DRAIN_GRACE_S="1.5",
        MLAPI_SHUTDOWN_TIMEOUT_S="20",
    )
    assert server.grpc is not None
    results: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    client = triton.InferenceServerClient(server.grpc)

    def call(value: float) -> None:
        rows = np.full(2000, value, np.float64)
        try:
            got = infer(client, "slow", rows, "FP64", "x").as_numpy("y")
            outcome, first = "ok", float(got[0])
        except Exception as exc:
            outcome, first = repr(exc), -1.0
        with lock:
            results.append((outcome, value, first))

    try:
        with stub(server.grpc) as calls:

            def not_ready() -> bool:
                return not calls.ServerReady(service_pb2.ServerReadyRequest()).ready

            sigterm_under_load(server, call, not_ready, "ServerReady false")
        exit_code = server.process.wait(timeout=40)
    finally:
        client.close()
    assert exit_code == 0, server.log()
    assert len(results) == 48
    wrong = [r for r in results if r[0] != "ok" or r[2] != r[1] * 2]
    assert not wrong, wrong
    assert "Traceback" not in server.log()


def test_every_worker_listens_on_the_one_grpc_port(start_server: Callable[..., Server]) -> None:
    server = start_server(grpc=True, MODEL_PATH=str(DEFAULT_MODEL_PATH), WORKERS="2")
    assert server.grpc is not None
    port = int(server.grpc.rsplit(":", 1)[1])
    wait_for(lambda: _listeners(port) == 2, timeout_s=10, what="two gRPC listeners")
    for _ in range(20):  # a new connection each time: the kernel picks the worker
        client = triton.InferenceServerClient(server.grpc)
        try:
            assert infer(client, "iris", ROWS, "FP32").as_numpy("label").tolist() == [b"setosa"]
        finally:
            client.close()
    ok = 'mlapi_requests_total{model="iris",outcome="ok",protocol="grpc"'
    # each worker hands its counts over within a second (one scrape reaches one worker)
    wait_for(lambda: metric(server, ok) == 20, timeout_s=5, what="20 gRPC requests counted")


def test_a_taken_grpc_port_stops_the_start_with_a_clear_error(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    first = start_server(grpc=True, MODEL_PATH=str(DEFAULT_MODEL_PATH))
    assert first.grpc is not None
    taken = first.grpc.rsplit(":", 1)[1]
    second = subprocess.run(
        [MLAPI, "serve", "--port", str(free_port()), "--grpc-port", taken],
        env=base_env(MODEL_PATH=str(DEFAULT_MODEL_PATH)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"mlapi: error: API_GRPC_PORT: cannot listen on 127.0.0.1:{taken}")
    with stub(first.grpc) as calls:  # the first one is untouched
        assert calls.ServerReady(service_pb2.ServerReadyRequest()).ready


def test_grpc_port_0_turns_it_off(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))  # base_env: API_GRPC_PORT=0
    http_port = int(server.url.rsplit(":", 1)[1])
    assert _listening_ports(server.process.pid) == {http_port}
    assert "gRPC on" not in server.log()
    with_grpc = start_server(grpc=True, MODEL_PATH=str(DEFAULT_MODEL_PATH))
    assert with_grpc.grpc is not None
    ports = {int(with_grpc.url.rsplit(":", 1)[1]), int(with_grpc.grpc.rsplit(":", 1)[1])}
    assert _listening_ports(with_grpc.process.pid) == ports


def test_health_turns_not_serving_at_sigterm_and_an_open_watch_never_holds_the_stop(
    start_server: Callable[..., Server],
) -> None:
    """A balancer watching grpc.health.v1 sees NOT_SERVING within the drain grace (so
    it moves away before the port closes), and its stream ends when the port closes:
    the server exits long before MLAPI_SHUTDOWN_TIMEOUT_S."""
    server = start_server(
        grpc=True,
        MODEL_PATH=str(DEFAULT_MODEL_PATH),
        MLAPI_DRAIN_GRACE_S="2",
        MLAPI_SHUTDOWN_TIMEOUT_S="30",
    )
    assert server.grpc is not None
    seen: list[tuple[str, float]] = []
    ended: list[str] = []
    with health_stub(server.grpc) as health:
        assert health_of(health, "") == "SERVING"
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)

        def read() -> None:
            try:
                for answer in stream:
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                    seen.append((name, time.monotonic()))
                ended.append("OK")
            except grpc.RpcError as exc:
                ended.append(exc.code().name)

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: len(seen) == 1, what="the first status")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: len(seen) == 2, timeout_s=2, what="NOT_SERVING streamed")
        assert health_of(health, "") == "NOT_SERVING"  # still accepting, in the grace
        exit_code = server.process.wait(timeout=25)
        stopped_after = time.monotonic() - signalled
        reader.join(timeout=10)
    assert exit_code == 0, server.log()
    assert [name for name, _ in seen] == ["SERVING", "NOT_SERVING"]
    assert seen[1][1] - signalled < 1.5  # before the 2 s grace ends
    assert ended == ["OK"]  # the stream ended as a stream ends, not cut off
    assert stopped_after < 10, f"stopped {stopped_after:.1f}s after SIGTERM"
