"""Starting a server pinned to a core, checking its answers, and driving it with
wrk from another core; resident memory of a server and its children."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from models import Models
from targets import Target, free_port


def get_status(url: str, timeout_s: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read(), {k.lower(): v for k, v in response.headers.items()}


def _tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    for current in _tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        except (OSError, AttributeError):
            continue
    return total / 1024


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process and its descendants."""
    ticks = 0
    for current in _tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, target: Target, models: Models, model: str, cores: str = "0") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            **target.env(models, model),
        }
        cwd = target.cwd(models, model) if target.cwd else models.folder
        self.log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115 - lives as long as the server
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            ["taskset", "-c", cores, *target.command(models, model, self.port)],
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited {self.process.returncode}: " + self.tail())
            if get_status(self.url + path) == 200:
                return time.monotonic() - self.started
            time.sleep(0.02)
        raise RuntimeError("not ready in time: " + self.tail())

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-600:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        Path(self.log.name).unlink(missing_ok=True)


def check_answers(server: Server, target: Target, models: Models, model: str) -> None:
    """Before any timing: the server's labels agree with in-process predictions."""
    rng = np.random.default_rng(3)
    reference = models.reference[model]
    for rows in (1, 8, 1, 8, 3):
        x = models.features[rng.integers(0, len(models.features), rows)]
        body = target.body(x)
        got = target.labels(*post(server.url + target.path(model), body, target.headers(body)))
        want = reference.predict(x.astype(np.float64)).tolist()
        agree = sum(int(a == b) for a, b in zip(got or [], want, strict=False))
        if got is None or len(got) != rows or agree < rows:
            # float32 ONNX vs float64 sklearn may differ on a knife-edge row; allow none here
            raise RuntimeError(f"wrong answer: got {got}, expected {want}")


@dataclass
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None  # the server's CPU per request, when its pid was given


def write_results(stem: str, text: str, data: object) -> None:
    """A bench's table (printed, and bench/results/STEM.md) and its figures (STEM.json)."""
    print(text)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2))


def _lua_string(data: bytes) -> str:
    """Any bytes as a Lua string literal (decimal escapes outside printable ASCII)."""
    out = []
    for byte in data:
        char = chr(byte)
        if 32 <= byte < 127 and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def wrk(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    cores: str = "1",
    pid: int | None = None,
    delay_ms: int = 0,
    timeout_s: int = 2,
    bodies: list[bytes] | None = None,
) -> Load:
    """wrk -t1 on ``cores``: the same POST over ``connections`` keep-alive connections
    (each waiting ``delay_ms`` between an answer and its next request: a set rate), or
    ``bodies`` in turn. With the server's ``pid``, also its CPU time per request: what
    a request costs, which neighbours on a shared machine change far less than the rate."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body)}"]
    if bodies:
        lines.append("bodies = {" + ",\n".join(_lua_string(b) for b in bodies) + "}")
        lines.append("turn = 0")
        lines.append(
            "request = function() turn = turn % #bodies + 1; "
            "return wrk.format(nil, nil, nil, bodies[turn]) end"
        )
    lines += [
        f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}"
        for k, v in headers.items()
    ]
    if delay_ms:
        lines.append(f"function delay() return {int(delay_ms)} end")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    cpu_before = cpu_s(pid) if pid else 0.0
    try:
        output = subprocess.run(
            [
                "taskset",
                "-c",
                cores,
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                f"--timeout={timeout_s}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    cpu_used = cpu_s(pid) - cpu_before if pid else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, output)
        errors += int(found.group(1)) if found else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", output)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    done = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    cpu_us = 1e6 * cpu_used / done if pid and done else None
    return Load(rps, latency("50%"), latency("99%"), errors, cpu_us)


@dataclass
class Pair:
    """Two servers driven in turn, the same body shape, several rounds: medians."""

    first: str
    second: str
    model: str
    rows: int
    first_rps: list[float]
    second_rps: list[float]
    first_cpu_us: list[float]
    second_cpu_us: list[float]

    @property
    def ratio(self) -> float:
        """Throughput, first over second (medians)."""
        return statistics.median(self.first_rps) / statistics.median(self.second_rps)

    @property
    def cpu_ratio(self) -> float:
        """Requests per CPU second, first over second (medians): the capacity of a
        core given to each, whatever the neighbours took from it during the run."""
        return statistics.median(self.second_cpu_us) / statistics.median(self.first_cpu_us)

    def median_rows_per_s(self, which: str) -> float:
        rps = self.first_rps if which == self.first else self.second_rps
        return statistics.median(rps) * self.rows


def paired(
    first: Target,
    second: Target,
    models: Models,
    model: str,
    rows: int,
    rounds: int,
    seconds: float,
) -> Pair:
    """Both servers up (on core 0, one idle while the other works), each checked,
    then wrk on one and the other in turn: a ratio that the machine's drift over
    minutes does not decide."""
    servers = [Server(first, models, model), Server(second, models, model)]
    try:
        x = models.features[np.random.default_rng(5).integers(0, len(models.features), rows)]
        calls = []
        for server, target in zip(servers, (first, second), strict=True):
            server.wait_ready(target.ready)
            check_answers(server, target, models, model)
            body = target.body(x)
            calls.append((server.url + target.path(model), body, target.headers(body)))
            wrk(*calls[-1], 64, 2)
        rates: list[list[float]] = [[], []]
        costs: list[list[float]] = [[], []]
        for _ in range(rounds):
            for index, call in enumerate(calls):
                load = wrk(*call, 64, seconds, pid=servers[index].process.pid)
                rates[index].append(load.requests_per_s)
                costs[index].append(load.cpu_us or 0.0)
    finally:
        for server in servers:
            server.stop()
    return Pair(first.name, second.name, model, rows, *rates, *costs)


def serve_pinned(
    repo: Path, env: dict[str, str], core: str = "0", ready_s: float = 180
) -> tuple[subprocess.Popen[bytes], str]:
    """`mlapi serve` of ``repo`` with one worker and one intra-op thread, pinned to
    ``core``, in a session of its own (``stop_served`` ends it), ``env`` over the
    defaults; its URL once /health answers 200. Its stderr goes to a file of its own in
    the temporary folder, whose end is in the error when it does not become ready."""
    from targets import MLAPI

    port = free_port()
    environment = {
        **os.environ,
        "MODEL_PATH": str(repo),
        "WORKERS": "1",
        "MLAPI_INTRA_OP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "LOG_LEVEL": "warning",
        "API_GRPC_PORT": str(free_port()),
        **env,
    }
    handle, name = tempfile.mkstemp(prefix="mlapi-bench-", suffix=".log")
    log = Path(name)
    with os.fdopen(handle, "wb") as stderr:
        process = subprocess.Popen(
            ["taskset", "-c", core, str(MLAPI), "serve", "--port", str(port)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    while get_status(url + "/health") != 200:
        if time.monotonic() > deadline or process.poll() is not None:
            os.killpg(process.pid, signal.SIGKILL)  # (its own session: nothing else)
            process.wait(timeout=30)
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the server of {repo} did not become ready:\n{tail}")
        time.sleep(0.1)
    return process, url


def stop_served(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
