"""ml-api's /v1/embeddings against the embedding servers users compare it with, on one
core each: Infinity (infinity-emb, its torch and its ONNX engine), with fastembed and
onnxruntime called in-process as the library references. Every one serves the same
all-MiniLM-L6-v2 weights, checked against sentence-transformers (cosine >= 0.999)
before any timing.

    bash bench/setup_text_peers.sh          # once: the peers' venvs and ONNX export
    .venv/bin/python bench/text.py --peers [--seconds 20] [--rounds 3]

Load: 2,000 generated sentences of 5 to 40 words (seeded), sent in turn, 1 or 32 to
an OpenAI-shaped request (`encoding_format` float), over 16 connections by wrk on
core 1; each server pinned to core 0 with one thread (ml-api: WORKERS=1,
MLAPI_INTRA_OP_THREADS=1; Infinity torch: OMP/MKL threads 1; Infinity ONNX: its
onnxruntime session held to one thread by bench/peers/ort_one_thread, since it opens
one per core and has no flag). The figure that decides is sentences per CPU second
of the server's process tree: what a core given to it serves, whatever the shared
machine's neighbours take meanwhile. Servers run one at a time, the order turned
each round; medians of the rounds. Writes bench/results/text-peers.md and .json."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
PEER_FOLDER = HERE / "results" / "text-peers" / "minilm"
SERVER_CORE, LOAD_CORE = "0", "1"
CONNECTIONS = 16
SIZES = (1, 32)
GOAL_INFINITY, GOAL_LIMIT = 1.2, 0.9

WORDS = (  # noqa: SIM905 (a word list reads better as one string)
    "the a of and to in is it that for on with as was at by from this be are or an "
    "model server request answer machine learning data text vector search query document "
    "index memory core thread batch token sentence word embedding similar result user "
    "river mountain city train station harvest bread price spring winter summer market "
    "quick brown fox lazy dog cat mat window warm cold light dark open close small large "
    "every first last long short new old good bad right left early late fast slow high low "
    "people country family school water music story night morning reason problem question "
    "serve deploy measure compare return receive start finish carry follow build write read "
    "unbelievably antidisestablishment tokenizer punctuation 1847 3.14159 42 kilometres"
).split()


def sentences(count: int = 2000, seed: int = 7) -> list[str]:
    """``count`` sentences of 5 to 40 words, the same every run."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 40))]
        made.append(" ".join(words).capitalize() + ".")
    return made


def bodies(texts: list[str], size: int, model: str) -> list[bytes]:
    chunks = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
    return [
        json.dumps({"model": model, "input": chunk, "encoding_format": "float"}).encode()
        for chunk in chunks
    ]


@dataclass
class Peer:
    name: str
    command: list[str]
    route: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    int8: bool = False  # held to the int8 import's bound, its similarity reported


def int8_models() -> Path:
    """minilm imported with --quantize int8, made once (the import checks it)."""
    root = HERE / "results" / "text-peers" / "int8-models"
    if not (root / "minilm" / "1" / "manifest.json").is_file():
        from tests.fixtures.text import minilm_source

        from mlapi.importers import text as text_import
        from mlapi.repository import publish

        staging = root.parent / "int8-staging"
        root.mkdir(parents=True, exist_ok=True)
        text_import.export(minilm_source(), staging, quantize="int8")
        publish.publish(root, "minilm", 1, source=staging, allow_pickle=False)
        shutil.rmtree(staging)
    return root


def peers(models: Path) -> list[Peer]:
    from targets import free_port

    infinity = str(VENVS / "infinity" / "bin" / "infinity_emb")
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    common = [
        "v2",
        "--device",
        "cpu",
        "--no-vector-disk-cache",
        "--host",
        "127.0.0.1",
        "--served-model-name",
        "minilm",
        "--batch-size",
        "32",
    ]
    mlapi = {
        "WORKERS": "1",
        "MLAPI_INTRA_OP_THREADS": "1",
        "MLAPI_ACCESS_LOG": "off",
        "LOG_LEVEL": "warning",
        "API_GRPC_PORT": str(free_port()),
        **one_thread,
    }
    serve = [str(Path(sys.executable).parent / "mlapi"), "serve"]
    return [
        Peer("ml-api", serve, "/v1/embeddings", {"MODEL_PATH": str(models), **mlapi}),
        Peer(
            "ml-api, int8 import",
            serve,
            "/v1/embeddings",
            {"MODEL_PATH": str(int8_models()), **mlapi},
            int8=True,
        ),
        Peer(
            "Infinity, torch engine",
            [infinity, *common, "--model-id", str(PEER_FOLDER), "--engine", "torch"],
            "/embeddings",
            one_thread,
        ),
        Peer(
            "Infinity, ONNX engine",
            [
                infinity,
                *common,
                "--model-id",
                ".",
                "--engine",
                "optimum",
                "--pooling-method",
                "mean",
            ],
            "/embeddings",
            {**one_thread, "PYTHONPATH": str(HERE / "peers" / "ort_one_thread")},
            PEER_FOLDER,
        ),
    ]


class Running:
    def __init__(self, peer: Peer) -> None:
        from targets import free_port

        self.peer = peer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (it lives as long as the server)
            prefix="text-peer-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *peer.command, "--port", str(self.port)],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **peer.env},
            cwd=peer.cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{peer.name} exited: {self.tail()}")
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"{peer.name} did not become ready: {self.tail()}")

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-1500:]

    def embed(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": "minilm", "input": texts, "encoding_format": "float"})
        request = urllib.request.Request(
            self.url + self.peer.route,
            body.encode(),
            {"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        rows = sorted(answer["data"], key=lambda item: item["index"])
        return np.array([item["embedding"] for item in rows], dtype=np.float32)

    def run(self, texts: list[str], size: int, seconds: float) -> dict[str, float]:
        from load import wrk

        load = wrk(
            self.url + self.peer.route,
            b"",
            {"Content-Type": "application/json"},
            CONNECTIONS,
            seconds,
            cores=LOAD_CORE,
            pid=self.process.pid,
            timeout_s=30,
            bodies=bodies(texts, size, "minilm"),
        )
        if load.errors:
            raise SystemExit(f"{self.peer.name}: {load.errors} failed requests")
        return {
            "per_s": load.requests_per_s * size,
            "per_cpu_s": 1e6 * size / load.cpu_us if load.cpu_us else 0.0,
            "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        Path(self.log.name).unlink(missing_ok=True)


# The encoder called in-process, as a program's lines (4 spaces in, under an if): a
# session of one thread on folder/model.onnx, and run(rows) -> normalised mean-pooled
# vectors of rows padded to their longest. Shared with bench/text.py.
ORT_ENCODER = r"""
    import onnxruntime as ort
    from tokenizers import Tokenizer
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(folder + "/model.onnx", options,
                                   providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
    tokenizer.enable_padding()
    tokenizer.enable_truncation(256)
    def run(rows):
        encodings = tokenizer.encode_batch(rows)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (states,) = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                       "token_type_ids": np.zeros_like(ids)})
        pooled = (states * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
"""

IN_PROCESS = (
    r"""
import json, os, sys, time
import numpy as np
os.sched_setaffinity(0, {int(sys.argv[1])})
kind, batch, seconds, folder = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
texts = json.loads(sys.stdin.read())
if kind == "fastembed":
    from fastembed import TextEmbedding
    model = TextEmbedding(model_name="sentence-transformers/all-MiniLM-L6-v2",
                          specific_model_path=folder, threads=1, local_files_only=True)
    def run(rows):
        return list(model.embed(rows, batch_size=batch))
else:
"""
    + ORT_ENCODER
    + r"""check = np.asarray(run(texts[:4]))
run(texts[:batch])
done, turn = 0, 0
cpu, wall = time.process_time(), time.perf_counter()
while time.perf_counter() - wall < seconds:
    start = (turn * batch) % (len(texts) - batch + 1)
    run(texts[start:start + batch])
    done += batch
    turn += 1
print(json.dumps({"per_s": done / (time.perf_counter() - wall),
                  "per_cpu_s": done / (time.process_time() - cpu),
                  "check": np.asarray(check, dtype=float).tolist()}))
"""
)


def in_process(
    kind: str, batch: int, seconds: float, texts: list[str], folder: Path
) -> dict[str, float]:
    """fastembed on the optimum export, or onnxruntime on the very model ml-api
    serves (its graph, its tokenizer), batches padded to their longest."""
    python = VENVS / "fastembed" / "bin" / "python" if kind == "fastembed" else sys.executable
    done = subprocess.run(
        [
            str(python),
            "-c",
            IN_PROCESS,
            SERVER_CORE,
            kind,
            str(batch),
            str(seconds),
            str(folder),
        ],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if done.returncode:
        raise SystemExit(f"{kind} in-process failed: {done.stderr[-1500:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    check = np.array(result.pop("check"), dtype=np.float32)
    check_vectors(f"{kind} in-process", check, texts)
    return result


_REFERENCE: dict[str, np.ndarray] = {}


def check_vectors(name: str, got: np.ndarray, texts: list[str], bound: float = 0.999) -> np.ndarray:
    """The first texts' vectors against sentence-transformers': their cosines."""
    if len(_REFERENCE.get("ref", ())) < len(got):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(PEER_FOLDER), device="cpu")
        _REFERENCE["ref"] = np.asarray(model.encode(texts[: len(got)]), dtype=np.float32)
    want = _REFERENCE["ref"][: len(got)]
    cosine: np.ndarray = (got * want).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    if cosine.min() < bound:
        raise SystemExit(f"{name} gives other embeddings: lowest cosine {cosine.min():.5f}")
    return cosine


def main(seconds: float, rounds: int, models: Path) -> int:
    if not (VENVS / "infinity").is_dir() or not (PEER_FOLDER / "model.onnx").is_file():
        raise SystemExit("run bash bench/setup_text_peers.sh first")
    texts = sentences()
    listed = peers(models)
    served: dict[str, dict[int, list[dict[str, float]]]] = {
        p.name: {size: [] for size in SIZES} for p in listed
    }
    local: dict[str, list[dict[str, float]]] = {}
    similarity: dict[str, float] = {}
    for round_index in range(rounds):
        turn = listed[round_index % len(listed) :] + listed[: round_index % len(listed)]
        for peer in turn:
            running = Running(peer)
            try:
                if peer.int8:  # 256 sentences, 32 a request, against the fp32 original
                    got = np.concatenate(
                        [running.embed(texts[i : i + 32]) for i in range(0, 256, 32)]
                    )
                    cosine = check_vectors(peer.name, got, texts, 0.97)
                    similarity = {"mean": float(cosine.mean()), "lowest": float(cosine.min())}
                else:
                    check_vectors(peer.name, running.embed(texts[:4]), texts)
                for size in SIZES:
                    running.run(texts, size, 5)  # warm-up
                    served[peer.name][size].append(running.run(texts, size, seconds))
            finally:
                running.stop()
        for kind in ("fastembed", "onnxruntime"):
            for size in SIZES:
                local.setdefault(f"{kind} in-process, batch {size}", []).append(
                    in_process(
                        kind,
                        size,
                        seconds,
                        texts,
                        PEER_FOLDER if kind == "fastembed" else models / "minilm" / "1",
                    )
                )
        print(
            f"round {round_index + 1}/{rounds} done: "
            + json.dumps({name: {s: r[-1] for s, r in by.items()} for name, by in served.items()}),
            file=sys.stderr,
        )
    return report(served, local, similarity)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def report(
    served: dict[str, dict[int, list[dict[str, float]]]],
    local: dict[str, list[dict[str, float]]],
    similarity: dict[str, float],
) -> int:
    lines = [
        "| server (one core, one thread) | sentences a request | sentences/CPU-s | "
        "sentences/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, by_size in served.items():
        for size, runs in by_size.items():
            lines.append(
                f"| {name} | {size} | {_median(runs, 'per_cpu_s'):,.0f} | "
                f"{_median(runs, 'per_s'):,.0f} | {_median(runs, 'p50_ms'):,.1f} | "
                f"{_median(runs, 'p99_ms'):,.1f} |"
            )
    for name, runs in local.items():
        batch = name.rsplit(" ", 1)[1]
        lines.append(
            f"| {name.split(',')[0]} | {batch} | {_median(runs, 'per_cpu_s'):,.0f} | "
            f"{_median(runs, 'per_s'):,.0f} | | |"
        )
    lines.append("")
    verdicts: dict[str, Any] = {}
    for size in SIZES:
        ours = _median(served["ml-api"][size], "per_cpu_s")
        best_name, best = max(
            (
                (n, _median(r[size], "per_cpu_s"))
                for n, r in served.items()
                if not n.startswith("ml-api")
            ),
            key=lambda item: item[1],
        )
        verdicts[f"vs_infinity_{size}"] = ours / best
        rounds = [  # the same round's runs side by side: less of the machine's drift
            a["per_cpu_s"] / b["per_cpu_s"]
            for a, b in zip(served["ml-api"][size], served[best_name][size], strict=True)
        ]
        lines.append(
            f"{size} a request: ml-api {ours / best:.2f}x {best_name} per CPU second "
            f"(goal >= {GOAL_INFINITY}; round by round "
            + ", ".join(f"{r:.2f}x" for r in rounds)
            + ")."
        )
    limit = _median(local["onnxruntime in-process, batch 32"], "per_cpu_s")
    ours_32 = _median(served["ml-api"][32], "per_cpu_s")
    verdicts["vs_limit_32"] = ours_32 / limit
    lines.append(
        f"32 a request: ml-api {ours_32 / limit:.2f}x onnxruntime in-process at batch 32 "
        f"per CPU second (goal >= {GOAL_LIMIT})."
    )
    if similarity:
        int8 = {size: _median(served["ml-api, int8 import"][size], "per_cpu_s") for size in SIZES}
        fp32 = {size: _median(served["ml-api"][size], "per_cpu_s") for size in SIZES}
        verdicts["int8_speed"] = {size: int8[size] / fp32[size] for size in SIZES}
        lines.append(
            "int8 import: "
            + ", ".join(f"{int8[s] / fp32[s]:.2f}x fp32 at {s} a request" for s in SIZES)
            + f"; cosine to the fp32 original on 256 sentences: mean {similarity['mean']:.4f}, "
            f"lowest {similarity['lowest']:.4f}."
        )
    from load import write_results

    write_results(
        "text-peers",
        "\n".join(lines),
        {"served": served, "local": local, "similarity": similarity, **verdicts},
    )
    return 0
