"""What padding-aware passes buy (issue 27), not a test: two `mlapi serve` processes
(one worker, one intra-op thread, each pinned to core 0 in turn) serve the same
all-MiniLM-L6-v2 import, one with `[text] max_padding` at the default (1.1) and one
with the bound off (`max_padding = 1000`: a batch is one pass, padded to its longest
row, as before). wrk on core 1 sends OpenAI `/v1/embeddings` requests of 32 sentences
of 5 to 40 words (and of 1 sentence) over 16 connections, to each server in turn,
``--rounds`` times. Prints sentences per CPU second of the server, p50/p99, and the
padded/real tokens of a request's rows cut the one way and the other.

    .venv/bin/python bench/text_passes.py [--rounds 3] [--seconds 6]

``--sweep`` instead measures, in-process on core 0, how the bound and the shortest cut
pass trade off (how the default was chosen): the same encoder through onnxruntime
(one thread) on batches of 64 such sentences, cut by ``passes`` with each setting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from load import serve_pinned, stop_served, wrk  # noqa: E402

from mlapi.runtimes.text import passes  # noqa: E402
from mlapi.runtimes.text_config import DEFAULT_MAX_PADDING, DEFAULT_TOKEN_BUDGET  # noqa: E402

CASES = {"passes cut at 1.1x padding": None, "one pass (bound off)": 1000}


def _sentences(vocabulary: list[str], count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(vocabulary) for _ in range(rng.randint(5, 40))).capitalize() + "."
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--sweep", action="store_true", help="in-process bounds, no server")
    args = parser.parse_args()
    from tests.fixtures.text import build
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = build(work / "built") / "minilm"
        repos = {}
        for name, bound in CASES.items():
            repo = work / name.split()[0]
            shutil.copytree(source, repo / "minilm")
            if bound is not None:
                toml = repo / "minilm" / "1" / "model.toml"
                toml.write_text(
                    toml.read_text().replace("[text]\n", f"[text]\nmax_padding = {bound}\n")
                )
                # the version's manifest holds each file's hash: this one's changed
                manifest = toml.parent / "manifest.json"
                files = json.loads(manifest.read_text())
                files["files"]["model.toml"] = hashlib.sha256(toml.read_bytes()).hexdigest()
                manifest.write_text(json.dumps(files, indent=2))
            repos[name] = repo
        tokenizer = Tokenizer.from_file(str(source / "1" / "tokenizer.json"))
        tokenizer.no_padding()  # as the server reads it
        tokenizer.enable_truncation(256)
        words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2)
        sentences = _sentences(words, 32)
        lengths = sorted(len(e.ids) for e in tokenizer.encode_batch(sentences))
        if args.sweep:
            _sweep(source / "1", tokenizer, _sentences(words, 2000), args.rounds)
            return
        bodies = {
            32: json.dumps({"model": "minilm", "input": sentences, "encoding_format": "base64"}),
            1: json.dumps({"model": "minilm", "input": sentences[0], "encoding_format": "base64"}),
        }
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        servers = {}
        try:
            for name, repo in repos.items():
                servers[name] = serve_pinned(repo, {"MLAPI_ACCESS_LOG": "off"})
            for _ in range(args.rounds):
                for size, body in bodies.items():
                    for name, (process, url) in servers.items():
                        load = wrk(
                            url + "/v1/embeddings",
                            body.encode(),
                            {"content-type": "application/json"},
                            16,
                            args.seconds,
                            cores="1",
                            pid=process.pid,
                            timeout_s=30,  # 16 x 32 sentences wait their turn on one core
                        )
                        if load.errors or not load.cpu_us:
                            request = urllib.request.Request(
                                url + "/v1/embeddings",
                                body.encode(),
                                {"content-type": "application/json"},
                            )
                            try:
                                urllib.request.urlopen(request, timeout=30)
                            except urllib.error.HTTPError as exc:
                                raise SystemExit(f"{exc.code}: {exc.read()[:300]!r}") from None
                            raise SystemExit(f"{load.errors} errors from wrk")
                        runs.setdefault((name, size), []).append(
                            {
                                "per_cpu_s": 1e6 / load.cpu_us * size,
                                "p50": load.p50_ms,
                                "p99": load.p99_ms,
                            }
                        )
        finally:
            for process, _ in servers.values():
                stop_served(process)
    print(
        f"{args.rounds} alternating rounds of {args.seconds:g} s, 16 connections, one core "
        "each; medians"
    )
    print(
        "| server | sentences a request | sentences per CPU second | against one pass "
        "| p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|")
    for size in bodies:
        base = statistics.median(r["per_cpu_s"] for r in runs[("one pass (bound off)", size)])
        for name in CASES:
            found = runs[(name, size)]
            rate = statistics.median(r["per_cpu_s"] for r in found)
            print(
                f"| {name} | {size} | {rate:,.0f} | {rate / base:.2f} | "
                f"{statistics.median(r['p50'] for r in found):.1f} | "
                f"{statistics.median(r['p99'] for r in found):.1f} |"
            )
    real = sum(lengths)
    for merged in (1, 2):  # one request's rows, two requests merged
        rows = sorted(lengths * merged)
        cut = passes(rows, DEFAULT_TOKEN_BUDGET, DEFAULT_MAX_PADDING)
        padded = sum((end - start) * rows[end - 1] for start, end in cut)
        print(
            f"{32 * merged} rows ({merged} request(s)): padded/real {padded / (real * merged):.3f} "
            f"in {len(cut)} passes; one pass {rows[-1] * len(rows) / (real * merged):.3f}"
        )


def _sweep(folder: Path, tokenizer: Any, sentences: list[str], rounds: int) -> None:
    import numpy as np
    import onnxruntime as ort

    from mlapi.runtimes import text

    os.sched_setaffinity(0, {0})
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    names = {i.name for i in session.get_inputs()}
    ids = [e.ids for e in tokenizer.encode_batch(sentences)]

    def encode(rows: list[list[int]]) -> None:
        longest = max(len(r) for r in rows)
        tokens = np.zeros((len(rows), longest), np.int64)
        mask = np.zeros_like(tokens)
        for i, row in enumerate(rows):
            tokens[i, : len(row)], mask[i, : len(row)] = row, 1
        feeds = {"input_ids": tokens, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(tokens)
        session.run(None, feeds)

    settings = [(1e9, 4), (1.05, 4), (1.1, 2), (1.1, 4), (1.1, 8), (1.15, 4), (1.35, 4)]
    rates: dict[tuple[float, int], list[float]] = {c: [] for c in settings}
    padding: dict[tuple[float, int], list[float]] = {c: [] for c in settings}
    rng = random.Random(1)
    for _ in range(rounds * 2):
        batches = [sorted(rng.sample(ids, 64), key=len) for _ in range(4)]
        for bound, shortest in settings:
            text.MIN_PASS_ROWS = shortest
            started, padded, real = time.perf_counter(), 0, 0
            for rows in batches:
                lengths = [len(r) for r in rows]
                for start, end in passes(lengths, DEFAULT_TOKEN_BUDGET, bound):
                    encode(rows[start:end])
                    padded += (end - start) * lengths[end - 1]
                real += sum(lengths)
            rates[(bound, shortest)].append(256 / (time.perf_counter() - started))
            padding[(bound, shortest)].append(padded / real)
    print("| bound | shortest cut pass | sentences/s (one core) | padded/real |")
    print("|---|---|---|---|")
    for bound, shortest in settings:
        shown = "off (one pass)" if bound > 100 else f"{bound:g}"
        print(
            f"| {shown} | {shortest} | {statistics.median(rates[(bound, shortest)]):.0f} | "
            f"{statistics.median(padding[(bound, shortest)]):.3f} |"
        )


if __name__ == "__main__":
    main()
