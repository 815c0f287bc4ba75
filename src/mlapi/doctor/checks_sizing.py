"""The checks that need numbers: the health check against the measured start, the
memory limit against the measured memory, threads and workers against the CPUs."""

from __future__ import annotations

import math

from mlapi.doctor import sizing
from mlapi.doctor.findings import Finding, Sources, mib
from mlapi.doctor.measure import Measurements
from mlapi.doctor.view import Service, whole

_LIVENESS_WORDS = ("/live", "health/live", "--live")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def workers_of(service: Service) -> int:
    """WORKERS as the server reads it (1 when unset), from the command line or env."""
    words = list(service.command or ())
    if "--workers" in words[:-1]:
        value = words[words.index("--workers") + 1]
    else:
        value = service.env("WORKERS") or "1"
    number = whole(value)
    return number if number is not None and number > 0 else 1


def health(
    service: Service, sources: Sources, measured: Measurements | None, suggested_s: int
) -> list[Finding]:
    name = service.name
    check = service.health
    key = ("services", name, "healthcheck")
    if check is None or check.disabled:
        return [
            Finding(
                "healthcheck.missing",
                "fail",
                name,
                "no health check: Docker cannot tell a replica still loading from one that serves",
                'healthcheck: {test: ["CMD", "mlapi", "healthcheck"]} (readiness)',
                sources.where(*key),
            )
        ]
    findings = []
    test = " ".join(check.test).lower()
    if any(word in test for word in _LIVENESS_WORDS):
        findings.append(
            Finding(
                "healthcheck.liveness",
                "fail",
                name,
                "the health check asks a liveness route: healthy before the models are ready",
                'test: ["CMD", "mlapi", "healthcheck"] (asks /health: ready = loaded and warmed)',
                sources.where(*key, "test"),
            )
        )
    if measured is None:
        return findings
    start = sizing.start_seconds(measured, workers_of(service), service.cpus or measured.cpus)
    window = check.start_period_s + check.interval_s * check.retries
    numbers = (
        f"start_period {check.start_period_s:g}s + interval {check.interval_s:g}s x retries "
        f"{check.retries} = {window:g}s; measured start {start:.1f}s under {measured.cpus:g} CPUs"
    )
    if window < sizing.START_MARGIN * start:
        findings.append(
            Finding(
                "healthcheck.start_period",
                "fail",
                name,
                f"{numbers}: under twice the start, a slow start is marked unhealthy",
                f"ML_API_START_PERIOD={suggested_s}s",
                sources.where(*key, "start_period"),
            )
        )
    else:
        findings.append(Finding("healthcheck.start_period", "ok", name, numbers))
    return findings


def memory(
    service: Service,
    sources: Sources,
    measured: Measurements | None,
    host_bytes: int,
    suggested_bytes: int,
) -> list[Finding]:
    name = service.name
    key = ("services", name, "deploy", "resources")
    fix = f"ML_API_MEMORY={sizing.memory_text(suggested_bytes)}" if measured else None
    if service.memory is None:
        return [
            Finding(
                "memory.no_limit",
                "fail",
                name,
                "no memory limit: a model too big for the host takes the host down with it",
                fix or "deploy.resources.limits.memory",
                sources.where(*key),
            )
        ]
    findings = []
    limit = service.memory
    where = sources.where(*key, "limits", "memory")
    if limit > host_bytes:
        findings.append(
            Finding(
                "memory.over_host",
                "fail",
                name,
                f"memory limit {mib(limit)} is more than this host has ({mib(host_bytes)})",
                fix,
                where,
            )
        )
    reserved = service.memory_reservation
    if reserved is not None and reserved > limit:
        findings.append(
            Finding(
                "memory.reservation_over_limit",
                "fail",
                name,
                f"memory reservation {mib(reserved)} is above the limit {mib(limit)}",
                f"deploy.resources.reservations.memory <= {mib(limit)}",
                sources.where(*key, "reservations", "memory"),
            )
        )
    if measured is not None:
        findings.append(_fit(service, measured, limit, suggested_bytes, fix, where))
    return findings


def _fit(
    service: Service,
    measured: Measurements,
    limit: int,
    suggested_bytes: int,
    fix: str | None,
    where: str | None,
) -> Finding:
    workers = workers_of(service)
    need = sizing.need_bytes(measured, workers)
    wanted = sizing.suggested_bytes(measured, workers)
    on_demand = sizing.cached(measured)
    if on_demand:
        largest = max(m.own_bytes for m in on_demand)
        models = (
            f"hot set (eager and pinned) {mib(sizing.hot_bytes(measured))} + the largest "
            f"on-demand model {mib(largest)}"
        )
    else:
        models = f"models {mib(sum(m.own_bytes for m in measured.loaded))}"
    numbers = (
        f"limit {mib(limit)}; {workers} worker(s) x (server {mib(measured.base_rss_bytes)}"
        f" + {models} + largest load or batch"
        f" {mib(max((m.transient_bytes for m in measured.loaded), default=0))})"
        f"{' + supervisor' if workers > 1 else ''} = {mib(need)}"
    )
    held = sizing.cache_capacity(measured, workers, limit) if on_demand else 0
    if on_demand:
        numbers += (
            f"; each worker's cache holds about {held} of the {len(on_demand)} on-demand "
            f"models at once"
        )
    if limit < need:
        return Finding(
            "memory.limit_low",
            "fail",
            service.name,
            f"{numbers}: the hot set and the largest on-demand model's load do not fit"
            if on_demand
            else f"{numbers}: the container would be OOM-killed",
            fix,
            where,
        )
    if on_demand and held < min(2, len(on_demand)):
        return Finding(
            "memory.cache_small",
            "warn",
            service.name,
            f"{numbers}: a model in constant use keeps the next one from loading beside it "
            f"(its requests wait, then get 507); give each worker room for two or more, "
            f"or fewer WORKERS",
            fix,
            where,
        )
    if limit < wanted:
        return Finding(
            "memory.limit_low",
            "warn",
            service.name,
            f"{numbers}; with a 15% margin and room to load an update beside the largest "
            f"model: {mib(wanted)}",
            fix,
            where,
        )
    return Finding("memory.limit", "ok", service.name, numbers)


def cpu(service: Service, sources: Sources) -> list[Finding]:
    name = service.name
    key = ("services", name, "deploy", "resources", "limits")
    if service.cpus is None:
        return [
            Finding(
                "cpu.no_limit",
                "warn",
                name,
                "no CPU limit: the math libraries size their thread pools for the whole host",
                'deploy.resources.limits.cpus: "${ML_API_CPUS:-2}"',
                sources.where(*key),
            )
        ]
    findings = []
    cpus = service.cpus
    workers = workers_of(service)
    for variable in _THREAD_VARIABLES:
        value = service.env(variable)
        number = whole(value) if value else None
        if number is not None and number > cpus:
            findings.append(
                Finding(
                    "threads.over_cpus",
                    "fail",
                    name,
                    f"{variable}={value} threads on a {cpus:g}-CPU limit: they queue for the "
                    "CPUs and run many times slower",
                    f"{variable}: ${{ML_API_CPUS}} (at most {math.floor(cpus) or 1})",
                    sources.where("services", name, "environment", variable),
                )
            )
    intra = service.env("MLAPI_INTRA_OP_THREADS")
    threads = whole(intra) if intra else None
    if threads is not None and threads * workers > cpus:
        findings.append(
            Finding(
                "threads.over_cpus",
                "fail",
                name,
                f"MLAPI_INTRA_OP_THREADS={intra} x WORKERS={workers} threads on a "
                f"{cpus:g}-CPU limit",
                "unset MLAPI_INTRA_OP_THREADS (the server gives each worker CPUs / WORKERS)",
                sources.where("services", name, "environment", "MLAPI_INTRA_OP_THREADS"),
            )
        )
    if workers > math.ceil(cpus):
        findings.append(
            Finding(
                "workers.over_cpus",
                "warn",
                name,
                f"WORKERS={workers} on a {cpus:g}-CPU limit: each worker holds its own copy of "
                "the models for no more speed",
                f"WORKERS={max(1, math.ceil(cpus))}",
                sources.where("services", name, "environment", "WORKERS"),
            )
        )
    if not findings:
        findings.append(
            Finding("cpu.threads", "ok", name, f"{workers} worker(s), threads within {cpus:g} CPUs")
        )
    return findings
