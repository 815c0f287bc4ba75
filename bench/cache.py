"""More models than memory (issue 24), not a test.

40 ONNX models, 20 logistic regressions over many classes and 20 tree ensembles,
each 20 to 120 MB resident, built here once (``--models``, default
bench/results/cache-models). One ml-api container of the production image, built
here from this checkout, with a memory limit (``--memory``, 1100m) a third of their
total or less, one worker on one CPU, every model on demand. 32 clients send one-row V2
requests for ``--seconds`` (300), each picking a model by a Zipf law (s = 1.1, the
ranks shuffled once so that size and popularity are unrelated). Each answer says
whether it waited for a load (Server-Timing). Prints: requests, non-200 by status,
lost (no answer), hit ratio, loads and evictions per minute, p50 and p99 of warm
and cold requests, the container's OOMKilled and restarts; then the same
container with every model eager, which must refuse what does not fit at start
(no OOM kill).

    .venv/bin/python bench/cache.py [--seconds 300] [--memory 1100m] [--min-resident 2]

Needs a Docker engine (scripts/test-engine.sh) and the base image the tests use
(MLAPI_TEST_BASE_IMAGE, default mlapi-base:bookworm)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "ml-api:bench-cache"
NAME = "mlapi-bench-cache"
FEATURES = 32
MIB = 1 << 20


# ----- the models ------------------------------------------------------------------
def _logreg(path: Path, mb: float, seed: int) -> None:
    """MatMul, Add, ArgMax over ``mb`` MiB of float32 weights (onnxruntime packs a
    copy of them: about twice that resident)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes = max(2, int(mb * MIB / (4 * FEATURES)))
    weights = np.random.default_rng(seed).standard_normal((FEATURES, classes), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        "logreg",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _trees(path: Path, trees: int, seed: int, depth: int = 10, classes: int = 4) -> None:
    """A TreeEnsembleClassifier of ``trees`` full trees of ``depth`` (random splits
    and leaf weights: the cost of a forest, not a trained one)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inner, per = 2**depth - 1, 2 ** (depth + 1) - 1
    nodes = np.tile(np.arange(per), trees)
    leaf = nodes >= inner
    tree_ids = np.repeat(np.arange(trees), per)
    features = np.where(leaf, 0, rng.integers(0, FEATURES, nodes.size))
    values = np.where(leaf, 0.0, rng.standard_normal(nodes.size)).astype(np.float32)
    node = helper.make_node(
        "TreeEnsembleClassifier",
        ["features"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        nodes_treeids=tree_ids.tolist(),
        nodes_nodeids=nodes.tolist(),
        nodes_featureids=features.tolist(),
        nodes_modes=np.where(leaf, "LEAF", "BRANCH_LEQ").tolist(),
        nodes_values=values.tolist(),
        nodes_truenodeids=np.where(leaf, 0, 2 * nodes + 1).tolist(),
        nodes_falsenodeids=np.where(leaf, 0, 2 * nodes + 2).tolist(),
        class_treeids=tree_ids[leaf].tolist(),
        class_nodeids=nodes[leaf].tolist(),
        class_ids=rng.integers(0, classes, int(leaf.sum())).tolist(),
        class_weights=rng.random(int(leaf.sum())).astype(np.float32).tolist(),
        classlabels_int64s=list(range(classes)),
        post_transform="SOFTMAX",
    )
    graph = helper.make_graph(
        [node],
        "trees",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes]),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)


def make_models(root: Path) -> list[str]:
    """40 model folders under ``root`` (kept: made once), sizes spread from about 20
    to 120 MB resident. Their names."""
    names = []
    for i in range(40):
        share = (i // 2) / 19  # 0 .. 1, each size once as logreg and once as trees
        kind = "logreg" if i % 2 == 0 else "trees"
        name = f"{kind}-{i:02d}"
        folder = root / name / "1"
        names.append(name)
        if (folder / "model.onnx").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / "model.onnx.part"
        if kind == "logreg":
            _logreg(part, 10 + 50 * share, seed=i)
        else:
            _trees(part, int(40 + 200 * share), seed=i)
        part.rename(folder / "model.onnx")
    for path in [root, *root.rglob("*")]:  # the image's user (1000) reads them
        path.chmod(0o755 if path.is_dir() else 0o644)
    return names


# ----- the container ---------------------------------------------------------------
def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args[:3])}: {done.stderr.strip()[-500:]}")
    return done.stdout


def build_image() -> None:
    base = os.environ.get("MLAPI_TEST_BASE_IMAGE", "mlapi-base:bookworm")
    ca = "/etc/ssl/certs/ca-certificates.crt"
    env = {
        **os.environ,
        "PYTHON_IMAGE": base,
        "PIP_CA_FILE": ca if Path(ca).exists() else "/dev/null",
        "MLAPI_IMAGE": IMAGE.split(":")[0],
        "MLAPI_TAG": IMAGE.split(":")[1],
        "DOCKER_BUILDKIT": "1",
    }
    subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "build", "ml-api"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=1800,
    )


def cache_dir(models: Path) -> Path:
    """MLAPI_CACHE_DIR on the host, as the compose files keep it on a volume (not a
    tmpfs, whose pages the container's limit would count): onnxruntime's optimised
    graphs and each model's measured memory, empty at each run."""
    folder = models.parent / "cache-dir"
    if folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    folder.mkdir()
    os.chown(folder, 1000, 1000)
    return folder


def start(models: Path, memory: str, loading: str, min_resident: float, port: int) -> None:
    docker("rm", "-f", NAME, check=False)
    docker(
        "run",
        "-d",
        "--name",
        NAME,
        "--memory",
        memory,
        "--memory-swap",
        memory,
        "--cpus",
        "1",
        "--cpuset-cpus",
        "0",
        "-e",
        "API_HOST=0.0.0.0",
        "-e",
        "API_GRPC_PORT=0",
        "-e",
        "WORKERS=1",
        "-e",
        "MODEL_PATH=/app/models",
        "-e",
        f"MLAPI_MODEL_LOADING={loading}",
        "-e",
        f"MLAPI_MIN_RESIDENT_S={min_resident}",
        "-e",
        "MLAPI_CACHE_DIR=/app/cache",
        "-v",
        f"{cache_dir(models)}:/app/cache",
        "-v",
        f"{models}:/app/models:ro",
        "-p",
        f"127.0.0.1:{port}:8000",
        IMAGE,
    )


def container_state() -> dict[str, object]:
    (state,) = json.loads(docker("inspect", NAME))
    return {
        "oom_killed": state["State"]["OOMKilled"],
        "restarts": state["RestartCount"],
        "running": state["State"]["Running"],
    }


def wait_settled(url: str, timeout_s: float = 300) -> list[dict[str, Any]]:
    """The repository index once no model is LOADING or WARMING any more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            items = httpx.post(url + "/v2/repository/index", json={}, timeout=5).json()
            if items and all(i["state"] not in ("LOADING", "WARMING") for i in items):
                return list(items)
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not settle")


def counters(url: str, name: str) -> dict[str, float]:
    """Each sample of counter ``name`` by its labels' text."""
    found: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) + 1 :].rpartition("} ")
            found[labels] = float(value)
    return found


# ----- the traffic -----------------------------------------------------------------
async def traffic(
    url: str, names: list[str], seconds: float, clients: int = 32
) -> list[tuple[str, int, float, bool]]:
    """(model, status (0: no answer), seconds, waited for a load) of every request."""
    order = names[:]
    random.Random(7).shuffle(order)  # popularity unrelated to size or kind
    weights = [1 / (rank**1.1) for rank in range(1, len(order) + 1)]
    row = np.random.default_rng(0).standard_normal(FEATURES).astype(np.float32).tolist()
    body = json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, FEATURES], "data": row}]}
    ).encode()
    results: list[tuple[str, int, float, bool]] = []
    stop = time.monotonic() + seconds

    async def client(seed: int) -> None:
        pick = random.Random(seed)
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                name = pick.choices(order, weights)[0]
                started = time.perf_counter()
                try:
                    answer = await http.post(
                        f"/v2/models/{name}/infer", content=body, headers=headers
                    )
                    status, cold = answer.status_code, "server-timing" in answer.headers
                except httpx.TransportError:
                    status, cold = 0, False
                results.append((name, status, time.perf_counter() - started, cold))

    await asyncio.gather(*(client(seed) for seed in range(clients)))
    return results


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--memory", default="1100m")
    parser.add_argument("--min-resident", type=float, default=2.0)
    parser.add_argument("--models", type=Path, default=ROOT / "bench/results/cache-models")
    parser.add_argument("--port", type=int, default=18099)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    names = make_models(args.models.resolve())
    on_disk = sum(p.stat().st_size for p in args.models.rglob("*.onnx"))
    print(f"{len(names)} models, {on_disk / MIB:,.0f} MiB of files", flush=True)
    if not args.no_build:
        build_image()
    url = f"http://127.0.0.1:{args.port}"
    try:
        start(args.models.resolve(), args.memory, "on_demand", args.min_resident, args.port)
        wait_settled(url)
        results = asyncio.run(traffic(url, names, args.seconds))
        index = wait_settled(url)
        loads = counters(url, "mlapi_model_loads_total")
        evictions = counters(url, "mlapi_model_evictions_total")
        state = container_state()
        measured = {i["name"]: float(i["cache"].get("memory_mb", 0)) for i in index if "cache" in i}
        statuses: dict[int, int] = {}
        for _, status, _, _ in results:
            statuses[status] = statuses.get(status, 0) + 1
        ok = [r for r in results if r[1] == 200]
        cold = [r[2] for r in ok if r[3]]
        warm = [r[2] for r in ok if not r[3]]
        minutes = args.seconds / 60
        limit_mib = float(args.memory.rstrip("mMgG")) * (1024 if args.memory[-1] in "gG" else 1)
        total = sum(measured.values())
        print(
            json.dumps(
                {
                    "memory_limit_mib": limit_mib,
                    "models_resident_total_mib": round(total),
                    "models_measured": len([v for v in measured.values() if v]),
                    "total_over_limit": round(total / limit_mib, 2),
                    "requests": len(results),
                    "statuses": statuses,
                    "lost": statuses.get(0, 0),
                    "hit_ratio": round(1 - len(cold) / max(1, len(ok)), 4),
                    "loads_per_minute": round(sum(loads.values()) / minutes, 1),
                    "evictions_per_minute": round(sum(evictions.values()) / minutes, 1),
                    "warm": quantiles(warm),
                    "cold": quantiles(cold),
                    "container": state,
                },
                indent=1,
            ),
            flush=True,
        )
        # every model eager, in the same container: refused at start, not killed
        start(args.models.resolve(), args.memory, "eager", args.min_resident, args.port)
        index = wait_settled(url)
        refused = [i for i in index if i["state"] == "FAILED" and "needs about" in i["reason"]]
        ready = [i for i in index if i["state"] == "READY"]
        health = httpx.get(url + "/health", timeout=10).status_code
        print(
            json.dumps(
                {
                    "eager": {
                        "ready": len(ready),
                        "refused_for_memory": len(refused),
                        "health": health,
                        "container": container_state(),
                        "a_refusal": refused[0]["reason"] if refused else None,
                    }
                },
                indent=1,
            )
        )
    finally:
        docker("rm", "-f", NAME, check=False)


if __name__ == "__main__":
    main()
