"""Measuring the models a service will serve, each in a child process of its own
held to the CPUs the service gets (``mlapi.doctor.probe``), one after the other so
that none slows another: load and warm-up time, peak and steady resident memory,
inference latency at batch 1 and at the max batch size; and once, with no model,
the server's own memory and start time per worker (and a bare interpreter's memory:
with WORKERS > 1 the supervisor's multiprocessing resource tracker is one)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlapi.errors import ConfigError
from mlapi.repository import scan as repo_scan

# Variables of the service that change how many threads a model load gets, or where.
# Never MLAPI_ALLOW_PICKLE: an audit reads files it was asked to check, and a pickle
# among them is refused (named as a finding), never unpickled on the auditor's say-so.
PASSED_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MLAPI_DEVICE",
)


@dataclass(frozen=True)
class ModelMeasure:
    name: str
    version: str
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    base_rss_bytes: int = 0
    peak_rss_bytes: int = 0
    steady_rss_bytes: int = 0
    batch_1_ms: float | None = None
    batch_max_ms: float | None = None
    max_batch_size: int = 1
    error: str | None = None
    ran_code: bool = False  # a Python model: measuring it ran its model.py
    on_demand: bool = False  # loaded by its first request, evictable (registry.cache)
    pinned: bool = False  # on demand, but never evicted once loaded

    @property
    def stays(self) -> bool:
        """Whether it stays resident in every worker: eager, or on demand and pinned."""
        return not self.on_demand or self.pinned

    @property
    def own_bytes(self) -> int:
        """What the model adds to a worker once loaded."""
        return max(0, self.steady_rss_bytes - self.base_rss_bytes)

    @property
    def transient_bytes(self) -> int:
        """What loading it or a max-size batch takes for a while above that."""
        return max(0, self.peak_rss_bytes - self.steady_rss_bytes)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "load_seconds": round(self.load_seconds, 4),
            "warmup_seconds": round(self.warmup_seconds, 4),
            "peak_rss_bytes": self.peak_rss_bytes,
            "steady_rss_bytes": self.steady_rss_bytes,
            "load": "on_demand" if self.on_demand else "eager",
            "latency_ms": {
                "batch_1": _rounded(self.batch_1_ms),
                "batch_max": _rounded(self.batch_max_ms),
            },
        }


@dataclass
class Measurements:
    cpus: float  # the limit measured under
    cpu_ids: tuple[int, ...]
    workers: int
    import_seconds: float = 0.0
    base_rss_bytes: int = 0
    interpreter_rss_bytes: int = 0
    models: list[ModelMeasure] = field(default_factory=list)

    @property
    def loaded(self) -> list[ModelMeasure]:
        return [model for model in self.models if model.error is None]

    @property
    def failed(self) -> list[ModelMeasure]:
        return [model for model in self.models if model.error is not None]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def cpu_ids(cpus: float | None) -> tuple[int, ...]:
    """The first ceil(cpus) CPUs this process may use (all of them without a limit)."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpus is None:
        return tuple(allowed)
    return tuple(allowed[: max(1, min(len(allowed), math.ceil(cpus)))])


def measure(
    model_path: Path,
    pinned_version: int | None,
    cpus: float | None,
    workers: int,
    service_env: Mapping[str, str | None],
    timeout_s: float,
) -> Measurements:
    if not model_path.is_dir():
        raise ConfigError(f"--model-path {model_path}: not a folder")
    ids = cpu_ids(cpus)
    result = Measurements(cpus or float(len(ids)), ids, workers)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MLAPI_SECRETS_DIR": "/nonexistent"}
    env.update({k: str(v) for k, v in service_env.items() if k in PASSED_VARIABLES and v})
    intra = service_env.get("MLAPI_INTRA_OP_THREADS") or "0"
    # gRPC is on unless the service says API_GRPC_PORT=0: a worker then also holds
    # grpc's library and server (about 14 MB), which the base must count
    grpc_on = str(service_env.get("API_GRPC_PORT") or "8001").strip() != "0"
    spec: dict[str, Any] = {
        "workers": workers,
        "intra_op_threads": intra,
        "cpu_ids": list(ids),
        "grpc": grpc_on,
    }
    base = _probe(spec, env, timeout_s)
    if "error" in base:
        raise ConfigError(f"cannot start a measuring process: {base['error']}")
    result.import_seconds = float(base["import_seconds"])
    result.base_rss_bytes = int(base["base_rss_bytes"])
    result.interpreter_rss_bytes = int(base["interpreter_rss_bytes"])
    for entry in repo_scan.scan(model_path, pinned_version):
        if entry.error:
            result.models.append(ModelMeasure(entry.name, "-", error=entry.error))
            continue
        for item in entry.versions:
            if item.config is None:
                result.models.append(ModelMeasure(item.name, str(item.version), error=item.error))
                continue
            report = _probe({**spec, "folder": str(item.path.resolve())}, env, timeout_s)
            measured = _model(item.name, str(item.version), report)
            mode = item.config.load or service_env.get("MLAPI_MODEL_LOADING") or "eager"
            result.models.append(
                replace(
                    measured,
                    ran_code=_runs_code(item),
                    on_demand=mode == "on_demand",
                    pinned=item.config.on_demand.pin,
                )
            )
    return result


def _runs_code(item: repo_scan.VersionEntry) -> bool:
    """Whether loading this version runs code from its folder (the python runtime)."""
    from mlapi.runtimes import catalog

    if item.config is None:
        return False
    try:
        return catalog.choose(item.path, item.config)[0] == "python"
    except Exception:  # no runtime chosen: the probe says why; nothing of it ran
        return False


def _model(name: str, version: str, report: dict[str, Any]) -> ModelMeasure:
    if "error" in report:
        return ModelMeasure(name, version, error=str(report["error"]))
    return ModelMeasure(
        name,
        version,
        load_seconds=float(report["load_seconds"]),
        warmup_seconds=float(report["warmup_seconds"]),
        base_rss_bytes=int(report["base_rss_bytes"]),
        peak_rss_bytes=int(report["peak_rss_bytes"]),
        steady_rss_bytes=int(report["steady_rss_bytes"]),
        batch_1_ms=report.get("batch_1"),
        batch_max_ms=report.get("batch_max"),
        max_batch_size=int(report.get("max_batch_size", 1)),
    )


def _probe(spec: dict[str, Any], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """One measuring child: Python's isolated mode (-I: no current folder, no
    PYTHON* variables, no user site on sys.path) in an empty folder of its own, so no
    file beside the audited compose file (a json.py, say) is imported in its place."""
    try:
        with tempfile.TemporaryDirectory(prefix="mlapi-doctor-") as neutral:
            done = subprocess.run(
                [sys.executable, "-I", "-m", "mlapi.doctor.probe", json.dumps(spec)],
                capture_output=True,
                text=True,
                env={**env, "MLAPI_ALLOW_PICKLE": "false"},
                cwd=neutral,
                timeout=timeout_s,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return {"error": f"did not load and warm up within {timeout_s:.0f} s (--timeout)"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        if done.returncode < 0 or done.returncode == 137:
            why = f"killed while loading (signal {-done.returncode}): out of memory?"
        return {"error": f"the measuring process failed: {why[:200]}"}
    report = json.loads(lines[-1])
    if not isinstance(report, dict):
        return {"error": "the measuring process gave no report"}
    return report
