"""The child process doctor measures in: ``python -m mlapi.doctor.probe JSON``. It
holds itself to the CPUs it is given, imports what a server worker imports, and
then (when given a version folder) loads and warms that version through the
registry's own loader, times inference at batch 1 and at the model's max batch
size, and prints one JSON line: times in seconds, memory in bytes."""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlapi.repository.config import ModelConfig
    from mlapi.runtimes.base import Runtime

_STARTED = time.perf_counter()
_LATENCY_RUNS = 200
_LATENCY_BUDGET_S = 1.5


def _status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"{field}:\s+(\d+)\s+kB", text)
    return int(match.group(1)) * 1024 if match else 0


def _median_ms(call: Callable[[], object]) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + _LATENCY_BUDGET_S
    while len(times) < _LATENCY_RUNS and (len(times) < 5 or time.perf_counter() < deadline):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def _batch_inputs(runtime: Runtime, config: ModelConfig, rows: int | None) -> dict[str, Any] | None:
    """Inputs of ``rows`` rows: the warm-up request's first row, repeated; with
    ``rows`` None (a model that does not batch), the warm-up request as it is."""
    import numpy as np

    from mlapi.registry.loading import warmup_inputs

    arrays = warmup_inputs(runtime.signature, config)
    if arrays is None:
        return None
    if rows is None:
        return arrays
    return {name: np.repeat(value[:1], rows, axis=0) for name, value in arrays.items()}


def _measure_version(spec: dict[str, Any], report: dict[str, Any]) -> None:
    from mlapi.errors import MlapiError
    from mlapi.observability.metrics import Metrics
    from mlapi.registry import loading
    from mlapi.registry.loading import Loader
    from mlapi.registry.versions import ModelVersion
    from mlapi.repository import manifest
    from mlapi.repository import scan as repo_scan
    from mlapi.settings import available_cpus, load_settings

    folder = Path(spec["folder"])
    entry = repo_scan.scan_model(folder.parent)
    item = next((v for v in entry.versions if v.version == int(folder.name)), None)
    if item is None or item.config is None:
        report["error"] = (item.error if item else entry.error) or "not a version the scan serves"
        return
    settings = load_settings(
        env_file=None,
        MODEL_PATH=str(folder.parent.parent),
        WORKERS=spec["workers"],
        MLAPI_INTRA_OP_THREADS=spec["intra_op_threads"],
        MLAPI_MEMORY_LIMIT=1 << 50,  # measure; the fit is doctor's to judge
    )
    threads = settings.intra_op_threads or max(1, int(available_cpus() // settings.workers))
    loader = Loader(settings, Metrics(), threads)
    version = ModelVersion(
        item.name, item.version, item.path, item.config, fingerprint=manifest.fingerprint(item.path)
    )
    try:
        loader.load_and_warm(version)
    except MlapiError as exc:
        report["error"] = exc.message
        return
    except Exception as exc:  # a broken model is a finding, never a doctor crash
        report["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return
    report["load_seconds"] = version.load_seconds
    report["warmup_seconds"] = version.warmup_seconds
    runtime = version.loaded_runtime()
    outputs = runtime.signature.output_names()
    batching = item.config.batching
    batchable = batching.enabled and loading.stackable(runtime.signature)
    max_rows = batching.max_batch_size if batchable else 1
    report["max_batch_size"] = max_rows
    sizes = (1, max_rows) if batchable else (None, None)
    for key, rows in zip(("batch_1", "batch_max"), sizes, strict=True):
        inputs = _batch_inputs(runtime, item.config, rows)
        if inputs is not None:
            report[key] = _median_ms(partial(runtime.predict, inputs, outputs))
    loading.settle_garbage_collector()
    report["steady_rss_bytes"] = _status_bytes("VmRSS")
    version.close()


def _start_grpc() -> None:
    """What the gRPC front adds to a worker: grpc's library and a started server
    (on a port of the loopback that no one calls), left running while we measure."""
    import asyncio

    import grpc

    async def start() -> None:
        server = grpc.aio.server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()
        _KEEP.append(server)

    asyncio.new_event_loop().run_until_complete(start())


_KEEP: list[object] = []


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    interpreter_rss = _status_bytes("VmRSS")
    cpus = spec.get("cpu_ids")
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    import uvicorn  # noqa: F401  what a worker imports before its models

    import mlapi.app  # noqa: F401

    if spec.get("grpc"):
        _start_grpc()
    gc.collect()
    report: dict[str, Any] = {
        "import_seconds": time.perf_counter() - _STARTED,
        "base_rss_bytes": _status_bytes("VmRSS"),
        "interpreter_rss_bytes": interpreter_rss,
    }
    if spec.get("folder"):
        _measure_version(spec, report)
    report["peak_rss_bytes"] = _status_bytes("VmHWM")
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
