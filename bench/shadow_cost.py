"""What a shadow rollout costs the clients (issue 23), not a test.

Two `mlapi serve` processes (one worker, one intra-op thread, pinned to core 0)
serve bench/models.py's 100-tree forest (ONNX, 32 features): "plain" serves
version 1; "shadow" serves version 1 with version 2 (the same model) on a shadow
trial at shadow_fraction 1.0 that never decides (every request is copied, run on
the trial's thread of lower priority, and compared). wrk on core 1 sends one row
per request at a set rate: first unthrottled at the plain server, to learn the CPU
seconds a request costs, then at the rate that keeps the plain server's core
``--load`` busy (0.5: half), to each server in turn, ``--rounds`` times. Prints the
medians of the clients' p50 and p99, each server's CPU use, the shadow's comparisons
and drops, and shadow / plain.

    .venv/bin/python bench/shadow_cost.py [--rounds 5] [--seconds 10] [--load 0.5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import Load, cpu_s, serve_pinned, stop_served, wrk
from models import N_FEATURES, make_models

DELAY_MS = 5  # a set rate with plain wrk: connections x 1000 / (5 ms + latency)
SHADOW_FOREVER = """[rollout]
strategy = "shadow"
shadow_fraction = 1.0
min_compared = 1000000
max_shadow_s = 604800
"""


def _trial(url: str) -> dict[str, object]:
    request = urllib.request.Request(
        url + "/v2/repository/index",
        data=b"{}",
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        items = orjson.loads(response.read())
    return next((i["trial"] for i in items if i.get("trial")), {})


def _load(url: str, body: bytes, pid: int, seconds: float, rate: float | None) -> Load:
    """wrk from core 1: flat out (64 connections), or near ``rate`` requests a second
    (each connection waits DELAY_MS between an answer and its next request)."""
    path = url + "/v2/models/forest/infer"
    headers = {"content-type": "application/json"}
    if rate is None:
        return wrk(path, body, headers, 64, seconds, pid=pid)
    connections = max(1, round(rate * (DELAY_MS + 0.3) / 1000))
    return wrk(path, body, headers, connections, seconds, pid=pid, delay_ms=DELAY_MS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--load", type=float, default=0.5)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "shadow": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = make_models(work / "models")
        forest = work / "models" / "onnx" / "forest" / "1"
        plain, shadowed = work / "plain", work / "shadow"
        shutil.copytree(forest, plain / "forest" / "1")
        for version in ("1", "2"):
            shutil.copytree(forest, shadowed / "forest" / version)
        (shadowed / "forest" / "model.toml").write_text(SHADOW_FOREVER)
        row = np.asarray(models.features[0]).tolist()
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, N_FEATURES], "data": row}
        body = orjson.dumps({"inputs": [tensor]})
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for name, repo in (("plain", plain), ("shadow", shadowed)):
                servers[name] = serve_pinned(repo, {"MLAPI_REPOSITORY_POLL_S": "1"})
            deadline = time.monotonic() + 60  # ready once v1 is: the trial may still load
            while _trial(servers["shadow"][1]).get("strategy") != "shadow":
                assert time.monotonic() < deadline, "the shadow trial did not start"
                time.sleep(0.2)
            process, url = servers["plain"]
            calibration = _load(url, body, process.pid, 5, None)
            assert calibration.cpu_us is not None
            rate = args.load / (calibration.cpu_us / 1e6)
            print(
                f"one request: {calibration.cpu_us / 1e3:.3f} ms of CPU; a {args.load:.0%} busy "
                f"core: {rate:,.0f} requests/s"
            )
            for _ in range(args.rounds):
                for name, (process, url) in servers.items():
                    before = _trial(url) if name == "shadow" else {}
                    cpu = cpu_s(process.pid)
                    load = _load(url, body, process.pid, args.seconds, rate)
                    run = {
                        "p50": load.p50_ms,
                        "p99": load.p99_ms,
                        "rps": load.requests_per_s,
                        "errors": float(load.errors),
                        "cpu": (cpu_s(process.pid) - cpu) / args.seconds,
                    }
                    if name == "shadow":
                        after = _trial(url)
                        for key in ("compared", "dropped"):
                            done = int(after[key]) - int(before[key])  # type: ignore[call-overload]
                            run[key] = done / args.seconds
                    runs[name].append(run)
        finally:
            for process, _ in servers.values():
                stop_served(process)
    median = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    print(
        "| server | p50 ms | p99 ms | answers/s | errors | CPU (cores) "
        "| copies compared/s | dropped/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, m in median.items():
        print(
            f"| {name} | {m['p50']:.3f} | {m['p99']:.3f} | {m['rps']:,.0f} | {m['errors']:.0f} "
            f"| {m['cpu']:.2f} | {m.get('compared', 0):,.0f} | {m.get('dropped', 0):,.0f} |"
        )
    pairs = list(zip(runs["shadow"], runs["plain"], strict=True))
    p50 = statistics.median(s["p50"] / p["p50"] for s, p in pairs)
    p99 = statistics.median(s["p99"] / p["p99"] for s, p in pairs)
    print(f"shadow / plain, median of {args.rounds} paired rounds: p50 {p50:.3f}, p99 {p99:.3f}")


if __name__ == "__main__":
    main()
