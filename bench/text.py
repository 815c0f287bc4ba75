"""Text embeddings on one core: ml-api's /v1/embeddings against the limit (the same
ONNX encoder and tokenizer called in-process, no server) and sentence-transformers
in-process; every figure is sentences per second on one core.

    .venv/bin/python bench/text.py [--seconds 6] [--rounds 3]
    .venv/bin/python bench/text.py --peers   # against Infinity and fastembed: text_peers.py

The server (WORKERS=1, one intra-op thread) is pinned to core 0 and wrk drives it from
core 1: single short sentences at 1 and 64 connections, and requests of 32 sentences.
The in-process runs are pinned to core 0 too, at batch 1, at the mean batch the
server formed at 64 connections (read from its mlapi_batch_size histogram), and at
32. Server and in-process runs alternate, round by round; medians are shown. The
goal (issue 13): at 64 connections, at least 0.8x the in-process rate at the batch
size the server formed. Writes bench/results/text.json and text.md."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from load import write_results, wrk  # noqa: E402
from text_peers import ORT_ENCODER  # noqa: E402

SERVER_CORE, LOAD_CORE = "0", "1"
SENTENCES = [
    "How do I serve a model on my own machine?",
    "The cat sat on the mat.",
    "Sentence embeddings for search and retrieval.",
    "A quick brown fox jumps over the lazy dog.",
    "Prices rose sharply in the spring.",
    "Where is the nearest train station?",
    "This restaurant serves the best pizza in town.",
    "Open the window, it is too warm in here.",
]
GOAL = 0.8

IN_PROCESS = (
    r"""
import json, os, sys, time
import numpy as np
os.sched_setaffinity(0, {int(sys.argv[1])})
kind, batch, seconds, folder = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
sentences = json.loads(sys.argv[6])
rows = [sentences[i % len(sentences)] for i in range(batch)]
if kind == "onnxruntime":
"""
    + ORT_ENCODER
    + r"""else:
    import torch
    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(folder, device="cpu")
    def run(rows):
        return model.encode(rows, batch_size=batch)
for _ in range(3):
    run(rows)
done, started = 0, time.perf_counter()
while time.perf_counter() - started < seconds:
    run(rows)
    done += batch
print(json.dumps({"per_s": done / (time.perf_counter() - started)}))
"""
)


def text_models() -> Path:
    root = HERE / "results" / "text-models"
    if not (root / "minilm" / "1" / "manifest.json").is_file():
        from tests.fixtures.text import build

        build(root)
    return root


def in_process(kind: str, batch: int, seconds: float, folder: Path) -> float:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            IN_PROCESS,
            SERVER_CORE,
            kind,
            str(batch),
            str(seconds),
            str(folder),
            json.dumps(SENTENCES),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["per_s"])


def batch_histogram(url: str) -> tuple[float, float]:
    """(sum, count) of the server's mlapi_batch_size for minilm."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    found = {}
    for key in ("sum", "count"):
        match = re.search(
            rf'^mlapi_batch_size_{key}{{[^}}]*model="minilm"[^}}]*}} (\S+)', text, re.M
        )
        found[key] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


class Server:
    def __init__(self, models: Path) -> None:
        from targets import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "MODEL_PATH": str(models),
            "WORKERS": "1",
            "MLAPI_INTRA_OP_THREADS": "1",
            "MLAPI_ACCESS_LOG": "off",
            "LOG_LEVEL": "warning",
            "API_GRPC_PORT": str(free_port()),
        }
        mlapi = Path(sys.executable).parent / "mlapi"
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, str(mlapi), "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("ml-api did not become ready")

    def run(self, sentences: int, connections: int, seconds: float) -> dict[str, float]:
        rows = SENTENCES[0] if sentences == 1 else [SENTENCES[i % 8] for i in range(sentences)]
        body = json.dumps({"model": "minilm", "input": rows, "encoding_format": "base64"}).encode()
        before = batch_histogram(self.url)
        load = wrk(
            self.url + "/v1/embeddings",
            body,
            {"Content-Type": "application/json"},
            connections,
            seconds,
            cores=LOAD_CORE,
            pid=self.process.pid,
        )
        after = batch_histogram(self.url)
        if load.errors:
            raise SystemExit(f"{load.errors} failed requests")
        batches = after[1] - before[1]
        return {
            "per_s": load.requests_per_s * sentences,
            "mean_batch": (after[0] - before[0]) / batches if batches else 0.0,
            "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms,
            "cpu_us_per_sentence": (load.cpu_us or 0.0) / sentences,
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, help="per run (default 6; 20 with --peers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--peers",
        action="store_true",
        help="against Infinity and fastembed (bench/text_peers.py; setup_text_peers.sh first)",
    )
    args = parser.parse_args()
    models = text_models()
    if args.peers:
        import text_peers

        return text_peers.main(args.seconds or 20.0, args.rounds, models)
    args.seconds = args.seconds or 6.0
    folder = models / "minilm" / "1"
    scenarios = {
        "1 sentence, 1 connection": (1, 1),
        "1 sentence, 64 connections": (1, 64),
        "32 sentences, 4 connections": (32, 4),
    }
    served: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    limits: dict[str, list[float]] = {}
    server = Server(models)
    try:
        for sentences, connections in scenarios.values():  # warm-up
            server.run(sentences, connections, 2)
        for round_index in range(args.rounds):
            for name, (sentences, connections) in scenarios.items():
                served[name].append(server.run(sentences, connections, args.seconds))
            formed = max(
                1,
                round(
                    statistics.median(r["mean_batch"] for r in served["1 sentence, 64 connections"])
                ),
            )
            for kind, batch in (
                ("onnxruntime", 1),
                ("onnxruntime", formed),
                ("onnxruntime", 32),
                ("sentence-transformers", 1),
                ("sentence-transformers", 32),
            ):
                source = folder if kind == "onnxruntime" else st_folder()
                limits.setdefault(f"{kind} in-process, batch {batch}", []).append(
                    in_process(kind, batch, args.seconds, source)
                )
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        server.stop()
    return report(served, limits, formed)


def st_folder() -> Path:
    from tests.fixtures.text import minilm_source

    return minilm_source()


def report(
    served: dict[str, list[dict[str, float]]], limits: dict[str, list[float]], formed: int
) -> int:
    rows = []
    for name, runs in served.items():
        rows.append(
            (
                f"ml-api /v1/embeddings, {name}",
                statistics.median(r["per_s"] for r in runs),
                statistics.median(r["mean_batch"] for r in runs),
                statistics.median(r["cpu_us_per_sentence"] for r in runs),
            )
        )
    for name, values in limits.items():
        rows.append((name, statistics.median(values), None, None))  # type: ignore[arg-type]
    server_64 = statistics.median(r["per_s"] for r in served["1 sentence, 64 connections"])
    limit = statistics.median(limits[f"onnxruntime in-process, batch {formed}"])
    ratio = server_64 / limit
    lines = [
        "| what (one core) | sentences/s | mean batch formed | server CPU µs/sentence |",
        "|---|---:|---:|---:|",
    ]
    for name, per_s, batch, cpu in rows:
        lines.append(
            f"| {name} | {per_s:,.0f} | {'' if batch is None else f'{batch:.1f}'} | "
            f"{'' if cpu is None else f'{cpu:,.0f}'} |"
        )
    lines.append("")
    lines.append(
        f"At 64 connections ml-api forms batches of {formed} on average and does "
        f"{ratio:.2f}x the in-process onnxruntime rate at that batch size "
        f"(goal >= {GOAL}: {'holds' if ratio >= GOAL else 'does not hold'})."
    )
    write_results(
        "text",
        "\n".join(lines),
        {"served": served, "limits": limits, "formed": formed, "ratio_64": ratio},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
