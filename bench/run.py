"""ml-api against its peers, side by side, on this machine; every goal of the
performance issues with whether it holds, from one run.

    make bench            # or: .venv/bin/python bench/run.py [--quick] [--only ml-api,bare]

Every server is pinned to core 0 (`taskset`), wrk drives it from core 1 at 1, 16 and
64 connections with 1-row and 8-row bodies, after a warm-up. Before any timing, each
server's answers are checked against in-process predictions. ml-api is measured with
JSON and with binary tensors (tritonclient's default request). With a Docker engine
running, the production image's size and its start to healthy are measured too
(bench/deployment.py). Writes bench/results/results.json, results.md and chart.png.

Where things are: the models in bench/models.py, the servers compared in
bench/targets.py (peers' apps in bench/peers/), starting servers and the wrk load
generator in bench/load.py, the tables, goals and chart in bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import deployment
import numpy as np
from load import Pair, Server, check_answers, paired, rss_mb, wrk
from models import Models, make_models
from report import Run, ServerReport, chart, write_report
from targets import BARE, OURS, OURS_BINARY, TARGETS, Target, mlapi, v2_body

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def bench_target(
    target: Target, models: Models, model: str, args: argparse.Namespace
) -> ServerReport:
    report = ServerReport(target.name, model)
    if target.missing():
        report.problem = f"venv bench/.venvs/{target.venv} missing (bench/setup_peers.sh)"
        return report
    server = Server(target, models, model)
    try:
        report.cold_start_s = server.wait_ready(target.ready)
        check_answers(server, target, models, model)
        rng = np.random.default_rng(5)
        for rows in args.rows:
            x = models.features[rng.integers(0, len(models.features), rows)]
            url, body = server.url + target.path(model), target.body(x)
            headers = target.headers(body)
            wrk(url, body, headers, 64, args.warmup_s)
            for connections in args.connections:
                load = wrk(url, body, headers, connections, args.seconds, pid=server.process.pid)
                rps = load.requests_per_s
                report.runs.append(
                    Run(
                        target.name,
                        model,
                        rows,
                        connections,
                        rps,
                        rps * rows,
                        load.p50_ms,
                        load.p99_ms,
                        load.errors,
                        load.cpu_us,
                    )
                )
                print(
                    f"  {target.name:22} {model:7} rows={rows} c={connections:<3} "
                    f"{rps:9.0f} req/s  p50 {load.p50_ms:7.2f} ms  p99 {load.p99_ms:7.2f} ms  "
                    f"errors {load.errors}",
                    flush=True,
                )
        report.rss_mb = rss_mb(server.process.pid)
    except Exception as exc:  # a peer that fails is reported, not fatal
        report.problem = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"  {target.name:22} {model:7} FAILED: {report.problem}", flush=True)
    finally:
        server.stop()
    return report


PAIRS = [  # the goals decided by a ratio close to its bound
    (OURS, BARE, "logreg", 1),
    (OURS, BARE, "logreg", 8),
    (OURS, BARE, "forest", 8),
    (OURS_BINARY, OURS, "forest", 8),
]


def run_pairs(models: Models, args: argparse.Namespace) -> list[Pair]:
    by_name = {t.name: t for t in TARGETS}
    pairs = []
    for first, second, model, rows in PAIRS:
        wanted = [by_name[first], by_name[second]]
        if any(t.missing() for t in wanted):
            continue
        if args.only and not all(
            any(t.name.startswith(p) for p in args.only.split(",")) for t in wanted
        ):
            continue
        if model not in args.models.split(","):
            continue
        pair = paired(
            wanted[0], wanted[1], models, model, rows, args.rounds, min(args.seconds, 4.0)
        )
        print(
            f"  {first} / {second} {model} rows={rows}: {pair.ratio:.2f}x "
            f"throughput, {pair.cpu_ratio:.2f}x per CPU second",
            flush=True,
        )
        pairs.append(pair)
    return pairs


def cold_starts(models: Models, starts: int = 3) -> dict[str, float]:
    """ml-api from launch to /health 200, the median of a few starts per model, each
    on a quiet core (a peer's shutdown just before a start was seen to double it)."""
    medians = {}
    for model in ("logreg", "forest"):
        seconds = []
        for _ in range(starts):
            time.sleep(1.0)
            target = mlapi("onnx")
            server = Server(target, models, model)
            try:
                seconds.append(server.wait_ready(target.ready))
            finally:
                server.stop()
        medians[model] = statistics.median(seconds)
    return medians


def in_process_limits(models: Models, seconds: float = 2.0) -> dict[str, float]:
    """onnxruntime alone on core 0, one thread: what no server can beat."""
    import onnxruntime as ort
    import orjson

    limits: dict[str, float] = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # the servers' core
    try:
        for model in ("logreg", "forest"):
            session = ort.InferenceSession(
                str(models.folder / "onnx" / model / "1" / "model.onnx"),
                options,
                providers=["CPUExecutionProvider"],
            )
            names = [o.name for o in session.get_outputs()]
            for rows in (1, 64):
                x = np.ascontiguousarray(models.features[:rows])
                count, deadline = 0, time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    session.run(names, {"input": x})
                    count += 1
                limits[f"{model} rows/s, batch {rows}"] = count * rows / seconds
            body = v2_body("FP32")(models.features[:1])
            count, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                tensor = orjson.loads(body)["inputs"][0]
                x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                outputs = session.run(names, {"input": x})
                orjson.dumps(
                    {"outputs": [o.ravel() for o in outputs]}, option=orjson.OPT_SERIALIZE_NUMPY
                )
                count += 1
            limits[f"{model} decode+predict+encode/s, 1 row"] = count / seconds
    finally:
        os.sched_setaffinity(0, affinity)
    return limits


def workers_study(models: Models, seconds: float) -> list[str]:
    """WORKERS=1 vs 2 with both cores given to the server and to wrk alike (they
    compete: the numbers compare the two settings, not absolute capacity)."""
    lines = [
        "",
        "Workers on 2 cores (server and wrk share cores 0-1; logreg, 64 connections):",
        "",
        "| WORKERS | rows | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for workers in ("1", "2"):
        target = mlapi("onnx")
        base_env = target.env

        def with_workers(
            m: Models, model: str, base_env: Any = base_env, w: str = workers
        ) -> dict[str, str]:
            return {**base_env(m, model), "WORKERS": w}

        target.env = with_workers
        server = Server(target, models, "logreg", cores="0,1")
        try:
            server.wait_ready(target.ready)
            for rows in (1, 8):
                x = models.features[:rows]
                url, body = server.url + target.path("logreg"), target.body(x)
                headers = target.headers(body)
                wrk(url, body, headers, 64, 2, cores="0,1")
                load = wrk(url, body, headers, 64, seconds, cores="0,1")
                lines.append(
                    f"| {workers} | {rows} | {load.requests_per_s:,.0f} | {load.p50_ms:.2f} | "
                    f"{load.p99_ms:.2f} | {load.errors} |"
                )
                print(
                    f"  WORKERS={workers} rows={rows} {load.requests_per_s:9.0f} req/s", flush=True
                )
        finally:
            server.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="ml-api against its peers")
    parser.add_argument("--quick", action="store_true", help="64 connections, 1 and 8 rows, 4 s")
    parser.add_argument("--only", help="comma-separated name prefixes, e.g. ml-api,bare")
    parser.add_argument("--models", default="logreg,forest")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating runs per close comparison (0: none)"
    )
    parser.add_argument("--no-deployment", action="store_true", help="skip the Docker figures")
    parser.add_argument(
        "--workers-study", action="store_true", help="also compare WORKERS=1 and 2 on both cores"
    )
    args = parser.parse_args()
    args.connections = [64] if args.quick else [1, 16, 64]
    args.rows = [1, 8]
    if args.quick:
        args.seconds = min(args.seconds, 4.0)
    if not shutil.which("wrk") or not shutil.which("taskset"):
        sys.exit("bench: needs wrk and taskset (apt-get install wrk util-linux)")
    RESULTS.mkdir(exist_ok=True)
    targets = [
        t
        for t in TARGETS
        if not args.only or any(t.name.startswith(p) for p in args.only.split(","))
    ]
    with tempfile.TemporaryDirectory(prefix="mlapi-bench-") as folder:
        models = make_models(Path(folder))
        reports = []
        for model in args.models.split(","):
            for target in targets:
                reports.append(bench_target(target, models, model, args))
        pairs = run_pairs(models, args) if args.rounds else []
        limits = in_process_limits(models)
        starts = cold_starts(models)
        study = workers_study(models, args.seconds) if args.workers_study else []
    base = None if args.no_deployment else deployment.engine_base()
    figures = None
    if base is not None:
        print(f"  deployment: building the production images on {base} ...", flush=True)
        figures = deployment.measure(base)
    settings = (
        f"Settings: {args.seconds:g} s per run after a {args.warmup_s:g} s warm-up; "
        f"server on core 0, wrk on core 1; ml-api rows are {OURS} unless named"
        + (f"; images on {base}" if base else "")
    )
    text, goals = write_report(reports, pairs, limits, starts, figures, settings)
    text += "\n".join(study)
    (RESULTS / "results.md").write_text(text + "\n")
    (RESULTS / "results.json").write_text(
        json.dumps(
            {
                "goals": [asdict(g) for g in goals],
                "reports": [asdict(r) for r in reports],
                "pairs": [asdict(p) for p in pairs],
                "limits": limits,
                "cold_start_s": starts,
                "deployment": figures,
            },
            indent=2,
        )
    )
    chart(reports, RESULTS / "chart.png")
    print(text)


if __name__ == "__main__":
    main()
