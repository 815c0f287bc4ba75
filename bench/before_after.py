"""ml-api against itself at another commit: the same server code before and after a
change, side by side on the same machine, in alternating rounds (the machine is
shared and noisy; a request's CPU cost moves far less than its rate).

    .venv/bin/python bench/before_after.py --ref 160228c [--rounds 5] [--seconds 4] [--key K]

The "before" server runs the ``--ref`` commit's ``src/`` (a git worktree, put first
on PYTHONPATH) with this venv; "after" runs the working tree. Each is pinned to
core 0 and driven from core 1: V2 JSON with 1 and 8 rows and binary tensors by
wrk (64 connections), gRPC by h2load (16 connections x 4 streams), on the ONNX
logistic regression of bench/models.py. Prints and writes bench/results/
before_after.md: medians of requests per CPU second of the server, and after /
before."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from grpc_vs_http import grpc_request, h2load
from load import Server, wrk
from models import make_models
from targets import binary_body, binary_headers, free_port, json_headers, mlapi, v2_body

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _target(src: Path | None, grpc_port: int, key: str | None = None) -> object:
    target = mlapi("onnx")
    base_env = target.env

    def env(m: object, name: str) -> dict[str, str]:
        extra = {"API_GRPC_PORT": str(grpc_port)}
        if key is not None:
            extra["API_KEY"] = key
        if src is not None:
            extra["PYTHONPATH"] = str(src)
        return {**base_env(m, name), **extra}  # type: ignore[arg-type]

    target.env = env
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description="ml-api before and after a change")
    parser.add_argument("--ref", required=True, help="the commit to compare with")
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--key", help="an API key both servers take and HTTP requests send")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-before-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.ref],
            check=True,
            capture_output=True,
        )
        try:
            text = _compare(tree / "src", Path(folder) / "models", args)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
            )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "before_after.md").write_text(text)
    print(text)
    return 0


def _compare(before_src: Path, models_folder: Path, args: argparse.Namespace) -> str:
    models = make_models(models_folder)
    rng = np.random.default_rng(5)
    x1 = models.features[rng.integers(0, len(models.features), 1)]
    x8 = models.features[rng.integers(0, len(models.features), 8)]
    cases = {
        "V2 JSON, 1 row": (v2_body("FP32")(x1), _keyed(json_headers, args.key)),
        "V2 JSON, 8 rows": (v2_body("FP32")(x8), _keyed(json_headers, args.key)),
        "V2 binary, 8 rows": (binary_body(x8), _keyed(binary_headers, args.key)),
    }
    grpc_case = [] if args.key else ["gRPC, 8 rows"]
    message = grpc_request(args.model, x8, "FP32")
    costs: dict[tuple[str, str], list[float]] = {}
    for side in ("before", "after"):
        costs.update({(case, side): [] for case in [*cases, *grpc_case]})
    servers: dict[str, Server] = {}
    ports: dict[str, int] = {}
    try:
        for side, src in (("before", before_src), ("after", None)):
            ports[side] = free_port()
            target = _target(src, ports[side], args.key)
            servers[side] = Server(target, models, args.model)  # type: ignore[arg-type]
        for server in servers.values():
            server.wait_ready("/health")
        path = f"/v2/models/{args.model}/infer"
        for _ in range(args.rounds):
            for case, (body, headers) in cases.items():
                for side, server in servers.items():
                    load = wrk(
                        server.url + path,
                        body,
                        headers(body),
                        64,
                        args.seconds,
                        pid=server.process.pid,
                    )
                    if load.errors:
                        raise RuntimeError(f"{side} {case}: {load.errors} failed")
                    costs[(case, side)].append(1e6 / (load.cpu_us or 1e9))
            for side, server in servers.items() if grpc_case else ():
                _, cpu_us, failed = h2load(ports[side], message, args.seconds, server.process.pid)
                if failed:
                    raise RuntimeError(f"{side} gRPC: {failed} failed")
                costs[("gRPC, 8 rows", side)].append(1e6 / cpu_us)
            time.sleep(0.5)
    finally:
        for server in servers.values():
            server.stop()
    lines = [
        f"# ml-api before ({args.ref}) and after (bench/before_after.py)",
        "",
        f"{args.rounds} alternating rounds of {args.seconds:g} s, 64 in flight, one core each; "
        "medians of requests per CPU second of the server"
        + (", every request with an API key." if args.key else "."),
        "",
        "| request | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for case in [*cases, *grpc_case]:
        before = statistics.median(costs[(case, "before")])
        after = statistics.median(costs[(case, "after")])
        lines.append(f"| {case} | {before:,.0f} | {after:,.0f} | {after / before:.3f} |")
    return "\n".join(lines) + "\n"


def _keyed(headers: Any, key: str | None) -> Any:
    if key is None:
        return headers
    return lambda body: {**headers(body), "X-API-Key": key}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
