"""A soak run of the production compose deployment (issue 22, item 4; not a test):
two replicas behind nginx, for ``--minutes`` (30 by default), with

- steady clients on both fronts: V2 JSON, V2 binary, KServe V1 and gRPC ModelInfer,
  all to ``iris``, each counted by status;
- rollouts: a new ``iris`` version published into the models volume every few
  minutes (the README's one command), and a second model ``spare`` unloaded and
  loaded again on each replica through the repository API;
- clients killed mid-request: a body cut off half way, and a request whose
  connection closes before its answer;
- the hostile cases of issue 22 mixed in: no key and a wrong key (HTTP and gRPC), a
  keyless gRPC message of a million empty tensor entries, a body over the cap,
  malformed JSON, NaN, 3 million requested outputs, headers that never end.

What it reports (and writes to bench/results/soak.json): every answer by kind and
status; the 5xx outside the injected faults (the goal: none; ``spare`` answering
503 while it is unloaded is an injected fault); each replica's memory and open file
descriptors, sampled every 30 s (first, last, highest: the goal is flat); each
container's restart count and each replica's worker restarts (the goal: none).

    scripts/test-engine.sh        # a Docker engine and the local base images
    .venv/bin/python bench/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import Stack, docker, make_stack, write_api_key  # noqa: E402
from tests.fixtures.archives import version_tar  # noqa: E402
from tests.fixtures.grpc import raw_request, stub  # noqa: E402

from mlapi.settings import DEFAULT_MODEL_PATH  # noqa: E402

PROD = ["docker-compose.yml", "docker-compose.prod.yml"]
ROW = [5.1, 3.5, 1.4, 0.2]
IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
RESULTS = ROOT / "bench" / "results" / "soak.json"


class Tally:
    """Answers by (kind, status), thread-safe; 5xx outside the faults, with examples."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.unexpected: list[str] = []
        self._lock = threading.Lock()

    def add(self, kind: str, status: int | str, fault: bool = False, detail: str = "") -> None:
        with self._lock:
            self.counts[(kind, str(status))] += 1
            server_error = (isinstance(status, int) and status >= 500) or status in (
                "INTERNAL",
                "UNKNOWN",
                "UNAVAILABLE",
                "transport",
            )
            if server_error and not fault and len(self.unexpected) < 50:
                self.unexpected.append(f"{time.strftime('%H:%M:%S')} {kind} {status} {detail}")

    def unexpected_5xx(self) -> int:
        with self._lock:
            return sum(
                count
                for (kind, status), count in self.counts.items()
                if not kind.startswith("fault:")
                and (
                    (status.isdigit() and int(status) >= 500)
                    or status in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "transport")
                )
            )


def _loop(stop: threading.Event, pause_s: float, body: Callable[[], None]) -> None:
    while not stop.is_set():
        body()
        stop.wait(pause_s)


def http_clients(
    stack: Stack, key: str, tally: Tally, stop: threading.Event
) -> list[threading.Thread]:
    headers = {"Authorization": f"Bearer {key}"}
    rows = np.array([ROW], dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ]
        }
    ).encode()
    calls: dict[str, Callable[[httpx.Client], httpx.Response]] = {
        "v2-json": lambda c: c.post("/v2/models/iris/infer", json=IRIS),
        "v2-binary": lambda c: c.post(
            "/v2/models/iris/infer",
            content=header + rows.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        ),
        "v1": lambda c: c.post("/v1/models/iris:predict", json={"instances": [ROW]}),
        "spare": lambda c: c.post("/v2/models/spare/infer", json=IRIS),
    }
    threads = []
    for kind, call in calls.items():
        for _ in range(1 if kind == "spare" else 2):

            def run(
                kind: str = kind, call: Callable[[httpx.Client], httpx.Response] = call
            ) -> None:
                with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:

                    def once() -> None:
                        try:
                            answer = call(client)
                            # spare is unloaded and loaded again on purpose: its 503/404
                            # while it is away is the injected fault
                            fault = kind == "spare" and answer.status_code in (404, 503)
                            named = "fault:spare-away" if fault else kind
                            tally.add(named, answer.status_code, fault, answer.text[:200])
                        except httpx.TransportError as exc:
                            tally.add(kind, "transport", False, type(exc).__name__)

                    _loop(stop, 0.02, once)

            threads.append(threading.Thread(target=run, daemon=True))
    return threads


def grpc_clients(
    stack: Stack, key: str, tally: Tally, stop: threading.Event
) -> list[threading.Thread]:
    address = f"127.0.0.1:{stack.env['API_GRPC_PORT']}"
    request = raw_request("iris", np.array([ROW], dtype=np.float32))
    metadata = (("authorization", f"Bearer {key}"),)

    def run() -> None:
        with stub(address) as calls:

            def once() -> None:
                try:
                    calls.ModelInfer(request, metadata=metadata, timeout=30)
                    tally.add("grpc", "OK")
                except grpc.RpcError as exc:
                    tally.add("grpc", exc.code().name, False, str(exc.details())[:200])

            _loop(stop, 0.02, once)

    return [threading.Thread(target=run, daemon=True) for _ in range(2)]


def _raw_http(stack: Stack, data: bytes, read: bool = True, timeout_s: float = 15) -> str:
    """Send ``data`` on a fresh connection; the status line's code, or what happened."""
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(data)
        if not read:
            return "closed"
        try:
            first = sock.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
        except TimeoutError:
            return "timeout"
    parts = first.split()
    return parts[1] if len(parts) > 1 else "empty"


def hostile(stack: Stack, key: str, tally: Tally, stop: threading.Event) -> threading.Thread:
    """One hostile or killed client every second or so, in turn."""
    address = f"127.0.0.1:{stack.env['API_GRPC_PORT']}"
    auth = f"Authorization: Bearer {key}\r\n".encode()
    body = json.dumps(IRIS).encode()

    def post(extra: bytes, content: bytes, length: int | None = None) -> bytes:
        size = len(content) if length is None else length
        return (
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: soak\r\n"
            + extra
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + content
        )

    def http_case(name: str, data: bytes, read: bool = True) -> Callable[[], None]:
        def case() -> None:
            try:
                tally.add(f"fault:{name}", _raw_http(stack, data, read))
            except OSError as exc:
                tally.add(f"fault:{name}", type(exc).__name__)

        return case

    def grpc_case(
        name: str, request: Any, metadata: tuple[tuple[str, str], ...]
    ) -> Callable[[], None]:
        def case() -> None:
            with stub(address) as calls:
                try:
                    calls.ModelInfer(request, metadata=metadata, timeout=30)
                    tally.add(f"fault:{name}", "OK")
                except grpc.RpcError as exc:
                    tally.add(f"fault:{name}", exc.code().name)

        return case

    empty_entries = raw_request("iris", np.array([ROW], dtype=np.float32))
    for _ in range(1_000_000):
        empty_entries.inputs.add()
    many_outputs = raw_request("iris", np.array([ROW], dtype=np.float32))
    for _ in range(3_000_000):
        many_outputs.outputs.add(name="label")
    nan = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, "NaN", 1, 1]}]
    }
    cases = [
        http_case("no-key", post(b"", body)),
        http_case("wrong-key", post(b"Authorization: Bearer nope\r\n", body)),
        http_case("malformed-json", post(auth, b"{not json")),
        http_case("nan", post(auth, json.dumps(nan).encode())),
        http_case("over-cap", post(auth, b"", length=1 << 40)),
        http_case("cut-body", post(auth, body[:20], length=len(body)), read=False),
        http_case("gone-before-answer", post(auth, body), read=False),
        http_case(
            "endless-headers",
            b"POST /v2/models/iris/infer HTTP/1.1\r\nX-A: " + b"a" * 4000,
            read=False,
        ),
        grpc_case("grpc-no-key-million-entries", empty_entries, ()),
        grpc_case("grpc-wrong-key", empty_entries, (("authorization", "Bearer nope"),)),
        grpc_case(
            "grpc-three-million-outputs", many_outputs, (("authorization", f"Bearer {key}"),)
        ),
    ]

    def run() -> None:
        index = 0
        while not stop.is_set():
            cases[index % len(cases)]()
            index += 1
            stop.wait(1.0)

    return threading.Thread(target=run, daemon=True)


def _exec(stack: Stack, data: bytes, *command: str) -> subprocess.CompletedProcess[bytes]:
    return stack.compose_input(data, "exec", "-T", "ml-api", *command)


def _iris_tar() -> bytes:
    return version_tar(DEFAULT_MODEL_PATH / "iris" / "1")


REPLICA_SCRIPT = """
import json, os, sys, urllib.request as u
key = open('/run/secrets/api_key').read().strip()
def call(path, body=b'{}'):
    r = u.Request('http://127.0.0.1:8000' + path, data=body,
                  headers={'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'})
    try:
        return u.urlopen(r, timeout=60).status
    except u.HTTPError as e:
        return e.code
me = str(os.getpid())
fds = rss = 0
for p in os.listdir('/proc'):
    if p.isdigit() and p != me:  # the server's processes, not this probe
        try:
            fds += len(os.listdir(f'/proc/{p}/fd'))
            for line in open(f'/proc/{p}/status'):
                if line.startswith('VmRSS:'):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            pass  # a process that ended meanwhile
action = sys.argv[1]
status = call(f'/v2/repository/models/spare/{action}') if action != 'look' else 0
print(json.dumps({'fds': fds, 'rss': rss, 'status': status}))
"""


def replica(container: str, action: str = "look") -> dict[str, int]:
    out = docker("exec", container, "python", "-c", REPLICA_SCRIPT, action, timeout_s=120).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def operations(
    stack: Stack, tally: Tally, stop: threading.Event, samples: dict[str, list[dict[str, Any]]]
) -> threading.Thread:
    """Every 30 s: sample each replica; every 3 min: publish a new iris version; in
    between, unload and load ``spare`` on each replica."""
    containers = stack.compose("ps", "-q", "ml-api").stdout.split()
    iris = _iris_tar()

    def run() -> None:
        started = time.monotonic()
        version, tick = 2, 0
        while not stop.is_set():
            try:
                version = step(started, version, tick)
            except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
                tally.add("operations:step", "failed", False, str(exc)[-300:])
            tick += 1
            stop.wait(30)

    def step(started: float, version: int, tick: int) -> int:
        """One tick's work; the next version to publish."""
        for container in containers:
            try:
                seen = replica(container)
                samples.setdefault(container[:12], []).append(
                    {"t": round(time.monotonic() - started), **seen}
                )
            except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
                tally.add("operations:sample", "failed", False, str(exc)[:200])
        if tick % 6 == 5:  # every 3 minutes
            published = _exec(
                stack,
                iris,
                "mlapi",
                "models",
                "publish",
                "-",
                "--name",
                "iris",
                "--version",
                str(version),
            )
            tally.add("operations:publish", published.returncode, published.returncode != 0)
            version += 1
        elif tick % 6 == 2:  # spare away for a minute on every replica, then back
            for container in containers:
                tally.add("operations:unload", replica(container, "unload")["status"], True)
        elif tick % 6 == 4:
            for container in containers:
                tally.add("operations:load", replica(container, "load")["status"], True)
        return version

    return threading.Thread(target=run, daemon=True)


def restarts(stack: Stack) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for service in ("ml-api", "proxy"):
        for state in stack.containers(service):
            found[state["Name"].lstrip("/")] = {
                "restart_count": state["RestartCount"],
                "started_at": state["State"]["StartedAt"],
                "running": state["State"]["Running"],
            }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    tally, samples = Tally(), {}  # type: ignore[var-annotated]
    with tempfile.TemporaryDirectory(prefix="mlapi-soak-") as tmp:
        stack = make_stack(Path(tmp), PROD)
        key = write_api_key(stack)
        spare = stack.folder / "spare.tar"
        spare.write_bytes(_iris_tar())
        try:
            stack.compose("up", "-d", "--build", "--wait", timeout_s=900)
            published = _exec(
                stack, spare.read_bytes(), "mlapi", "models", "publish", "-", "--name", "spare"
            )
            assert published.returncode == 0, published.stderr
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with httpx.Client(base_url=stack.url, headers={"X-API-Key": key}) as client:
                    if client.post("/v2/models/spare/infer", json=IRIS).status_code == 200:
                        break
                time.sleep(1)
            before = restarts(stack)
            stop = threading.Event()
            threads = [
                *http_clients(stack, key, tally, stop),
                *grpc_clients(stack, key, tally, stop),
                hostile(stack, key, tally, stop),
                operations(stack, tally, stop, samples),
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(10)
                print(
                    f"{(time.monotonic() - started) / 60:5.1f} min: "
                    f"{sum(tally.counts.values()):,} answers, "
                    f"{tally.unexpected_5xx()} unexpected 5xx",
                    flush=True,
                )
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            after = restarts(stack)
            worker_restarts = stack.compose("logs", "--no-color", "ml-api").stdout.count(
                "; starting another"
            )
        finally:
            stack.down()
    report = {
        "minutes": args.minutes,
        "answers": {f"{kind} {status}": n for (kind, status), n in sorted(tally.counts.items())},
        "unexpected_5xx": tally.unexpected_5xx(),
        "unexpected_examples": tally.unexpected,
        "replicas": {
            name: {
                "rss_mb_first": round(rows[0]["rss"] / 2**20, 1),
                "rss_mb_last": round(rows[-1]["rss"] / 2**20, 1),
                "rss_mb_max": round(max(r["rss"] for r in rows) / 2**20, 1),
                "fds_first": rows[0]["fds"],
                "fds_last": rows[-1]["fds"],
                "fds_max": max(r["fds"] for r in rows),
                "samples": len(rows),
                "series": [(r["t"], round(r["rss"] / 2**20, 1), r["fds"]) for r in rows],
            }
            for name, rows in samples.items()
        },
        "publish_every_s": 180,
        "containers_before": before,
        "containers_after": after,
        "worker_restarts_logged": worker_restarts,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "answers"}, indent=2))
    print(json.dumps(report["answers"], indent=2))
    return 0 if report["unexpected_5xx"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
