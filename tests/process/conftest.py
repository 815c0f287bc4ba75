"""`mlapi serve` as a subprocess on a free loopback port, as a user starts it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for

MLAPI = str(Path(sys.executable).parent / "mlapi")


def status_of(url: str, timeout_s: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def metric(server: Server, prefix: str) -> float:
    """The sum of the samples on the server's /metrics named as ``prefix`` names them
    (``name{a="x",b="y"``) and carrying those labels, among any others (the
    requests' ``client``, a version); no such sample fails the test."""
    name, _, wanted = prefix.partition("{")
    want = set(_labels(wanted.rstrip("}")))
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    values = []
    for line in lines:
        if line.startswith(name + " ") and not want:
            values.append(float(line.split()[1]))
        elif line.startswith(name + "{"):
            labels, _, number = line[len(name) + 1 :].rpartition("} ")
            if want <= set(_labels(labels)):
                values.append(float(number))
    assert values, f"no sample {prefix}... on /metrics"
    return sum(values)


def _labels(text: str) -> list[tuple[str, str]]:
    return re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', text)


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MLAPI_")
        and k
        not in {
            "API_KEY",
            "API_KEY_FILE",
            "API_KEYS_FILE",
            "MODEL_PATH",
            "API_PORT",
            "WORKERS",
            "MODEL_VERSION",
        }
    }
    env["API_GRPC_PORT"] = "0"  # servers run side by side: gRPC only where a test asks
    env.update(extra)
    return env


def run_import(*args: str) -> subprocess.CompletedProcess[str]:
    """`mlapi models import ARGS` as a user runs it."""
    return subprocess.run(
        [MLAPI, "models", "import", *args],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    grpc: str | None = None  # host:port of its gRPC front, when the test asked for one

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(
        wait_ready: bool = True, args: tuple[str, ...] = (), grpc: bool = False, **env: str
    ) -> Server:
        port = free_port()
        if grpc:
            env.setdefault("API_GRPC_PORT", str(free_port()))
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [MLAPI, "serve", "--port", str(port), *args],
                env=base_env(**env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        grpc_address = f"127.0.0.1:{env['API_GRPC_PORT']}" if grpc else None
        server = Server(process, f"http://127.0.0.1:{port}", log_path, grpc_address)
        servers.append(server)
        wanted = 200 if wait_ready else None

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"server exited {process.returncode}:\n{server.log()}")
            code = status_of(server.url + "/health")
            return code == 200 if wanted else code is not None

        wait_for(up, timeout_s=60, what="server start")
        return server

    yield start
    for server in servers:
        server.stop()
