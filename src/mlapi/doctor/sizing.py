"""From measurements to the values a service needs. The formulas, in the README too:

- start: the import time (twice with WORKERS > 1: the supervisor, then each worker)
  plus every model's load and warm-up (one after the
  other: loads hold the GIL for most of their time), times WORKERS / CPUs when the
  workers outnumber the CPUs (they load at once and share them), divided by the CPU
  limit when it is under one CPU (measured on a whole one). The health check must
  allow twice that: ``start_period + interval x retries >= 2 x start``.
- memory need: WORKERS x (the server's base + each model's steady memory + the largest
  transient, load or max-size batch), plus with WORKERS > 1 the supervisor (a base)
  and its resource tracker (a bare interpreter). Under it the container is
  OOM-killed: a fail.
- memory suggested: the need plus 15 % (the margin Kubernetes' VPA adds) plus room, in
  every worker, to load the largest model's next version beside it (a rollout loads the
  candidate before it retires the old one), rounded up to 64 MiB, at least 256 MiB.
- on-demand models (``load = "on_demand"``): only those pinned stay in every worker
  with the eager ones (the hot set); of the rest, the need counts the largest one
  loaded beside them, which is what the cache needs to load any of them. How many
  fit at once is said beside it (the cache's capacity).
- CPUs: what the service is given (doctor cannot know the traffic); WORKERS: one per
  CPU while the memory suggested for them fits on this host, at least one."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from mlapi.doctor.measure import Measurements, ModelMeasure

MIB = 1 << 20
MARGIN = 1.15
START_MARGIN = 2.0
MIN_START_PERIOD_S = 10
MIN_MEMORY = 256 * MIB


@dataclass(frozen=True)
class Sizing:
    start_seconds: float  # measured start of one worker, scaled to the limit
    need_bytes: int
    suggested_bytes: int
    start_period_s: int
    cpus: int
    workers: int

    def suggested(self) -> dict[str, str]:
        return {
            "ML_API_START_PERIOD": f"{self.start_period_s}s",
            "ML_API_MEMORY": memory_text(self.suggested_bytes),
            "ML_API_CPUS": str(self.cpus),
            "WORKERS": str(self.workers),
        }


def memory_text(value: int) -> str:
    if value % (1 << 30) == 0:
        return f"{value >> 30}g"
    return f"{math.ceil(value / MIB)}m"


def start_seconds(measured: Measurements, workers: int, cpus: float) -> float:
    loads = sum(m.load_seconds + m.warmup_seconds for m in measured.loaded if not m.on_demand)
    contention = max(1.0, workers / cpus) if cpus > 0 else 1.0
    fraction = 1.0 / cpus if 0 < cpus < 1 else 1.0
    imports = measured.import_seconds * (2 if workers > 1 else 1)
    return (imports + loads) * contention * fraction


def hot_bytes(measured: Measurements) -> int:
    """What stays in each worker: the eager models and the pinned on-demand ones."""
    return sum(m.own_bytes for m in measured.loaded if m.stays)


def cached(measured: Measurements) -> list[ModelMeasure]:
    """The on-demand models the cache may evict."""
    return [m for m in measured.loaded if not m.stays]


def need_bytes(measured: Measurements, workers: int) -> int:
    models = measured.loaded
    own = hot_bytes(measured) + max((m.own_bytes for m in cached(measured)), default=0)
    transient = max((m.transient_bytes for m in models), default=0)
    supervisor = measured.base_rss_bytes + measured.interpreter_rss_bytes if workers > 1 else 0
    return workers * (measured.base_rss_bytes + own + transient) + supervisor


def suggested_bytes(measured: Measurements, workers: int) -> int:
    largest = max((m.own_bytes + m.transient_bytes for m in measured.loaded), default=0)
    raw = need_bytes(measured, workers) * MARGIN + workers * largest
    return max(MIN_MEMORY, math.ceil(raw / (64 * MIB)) * 64 * MIB)


def cache_capacity(measured: Measurements, workers: int, limit: int) -> int:
    """How many on-demand models of the median size one worker's cache holds at once
    under ``limit`` (registry.memory: each worker's share of what the headroom and the
    supervisor leave, less its server, its hot set and the largest load's transient)."""
    models = cached(measured)
    if not models:
        return 0
    sizes = sorted(max(m.own_bytes, 1) for m in models)
    median = sizes[len(sizes) // 2]
    headroom = max(64 * MIB, limit // 20)
    transient = max((m.transient_bytes for m in measured.loaded), default=0)
    supervisor = measured.base_rss_bytes + measured.interpreter_rss_bytes if workers > 1 else 0
    room = (limit - headroom - supervisor) // workers - measured.base_rss_bytes
    room -= hot_bytes(measured)
    return max(0, min(len(models), (room - transient) // median))


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def size(measured: Measurements, cpus_limit: float | None, host_bytes: int) -> Sizing:
    cpus = max(1, math.ceil(cpus_limit if cpus_limit else len(measured.cpu_ids)))
    workers = cpus
    while workers > 1 and suggested_bytes(measured, workers) > host_bytes:
        workers -= 1
    start = start_seconds(measured, workers, cpus_limit or float(cpus))
    period = max(MIN_START_PERIOD_S, math.ceil(START_MARGIN * start))
    return Sizing(
        start_seconds=start,
        need_bytes=need_bytes(measured, workers),
        suggested_bytes=suggested_bytes(measured, workers),
        start_period_s=period,
        cpus=cpus,
        workers=workers,
    )
