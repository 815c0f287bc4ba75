"""What the payload log and drift cost (issue 26), not a test.

Three `mlapi serve` processes (one worker, pinned to core 0) serve bench/models.py's
ONNX logistic regression: payload log off; on at MLAPI_PAYLOAD_SAMPLE=0.05 with
drift; on at 1.0 with drift (every request written and counted). wrk on core 1
sends V2 JSON requests of one row flat out (64 connections), to each server in turn,
``--rounds`` times. Prints the medians of requests per CPU second of the server and
each against off, and the records written and dropped.

    .venv/bin/python bench/payload_cost.py [--rounds 5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import serve_pinned, stop_served, wrk
from models import N_FEATURES, make_models

CASES = {"off": "0", "0.05 + drift": "0.05", "1.0 + drift": "1"}


def _counter(url: str, name: str) -> float:
    with subprocess.Popen(["curl", "-s", url + "/metrics"], stdout=subprocess.PIPE) as curl:
        text = curl.communicate()[0].decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    totals: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = make_models(work / "models")
        repo = work / "repo"
        shutil.copytree(work / "models" / "onnx" / "logreg", repo / "logreg")
        row = np.asarray(models.features[0]).tolist()
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, N_FEATURES], "data": row}
        body = orjson.dumps({"inputs": [tensor]})
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for n, (name, sample) in enumerate(CASES.items()):
                servers[name] = serve_pinned(
                    repo, {"MLAPI_LOG_DIR": str(work / f"logs-{n}"), "MLAPI_PAYLOAD_SAMPLE": sample}
                )
            for _ in range(args.rounds):
                for name, (process, url) in servers.items():
                    load = wrk(
                        url + "/v2/models/logreg/infer",
                        body,
                        {"content-type": "application/json"},
                        64,
                        args.seconds,
                        pid=process.pid,
                    )
                    assert load.cpu_us is not None and load.errors == 0
                    runs[name].append(1e6 / load.cpu_us)
            for name, (_, url) in servers.items():
                totals[name] = (
                    _counter(url, "mlapi_payload_records_total"),
                    _counter(url, "mlapi_payload_dropped_total"),
                )
        finally:
            for process, _ in servers.values():
                stop_served(process)
    base = statistics.median(runs["off"])
    print(f"{args.rounds} alternating rounds of {args.seconds:g} s, V2 JSON 1 row, one core each")
    print("| payload log | requests per CPU second | against off | records written | dropped |")
    print("|---|---|---|---|---|")
    for name, values in runs.items():
        written, dropped = totals[name]
        print(
            f"| {name} | {statistics.median(values):,.0f} | {statistics.median(values) / base:.3f} "
            f"| {written:,.0f} | {dropped:,.0f} |"
        )


if __name__ == "__main__":
    main()
