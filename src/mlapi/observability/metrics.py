"""Every Prometheus metric of the server, declared in this one module. Names carry
the ``mlapi_`` prefix and a unit suffix; labels are low-cardinality: a model name
appears only once the model is known to the registry, never as a client typed it.

With several worker processes (``WORKERS`` > 1) each worker writes its values to
``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any worker aggregates all of them, so
totals are right whichever worker answers (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os
import platform
import resource
from bisect import bisect_left
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from mlapi import __version__

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_MODEL = ("", "")  # labels of a request whose model could not be resolved
ANONYMOUS = "anonymous"  # the client of every request on a server with no key
STATES = ("loading", "warming", "ready", "failed", "unloading", "unavailable", "loadable")

# Outcome label of mlapi_requests_total for each error code.
OUTCOMES = {
    "bad_request": "bad_request",
    "payload_too_large": "bad_request",
    "headers_too_large": "bad_request",
    "unsupported_media_type": "bad_request",
    "method_not_allowed": "bad_request",
    "unauthorized": "unauthorized",
    "forbidden": "unauthorized",
    "rate_limited": "rate_limited",
    "not_found": "not_found",
    "not_ready": "not_ready",
    "overloaded": "overloaded",
    "timeout": "timeout",
    "cancelled": "cancelled",
}

PROTOCOLS = ("http", "grpc")  # the fronts a request can come through
ALL_OUTCOMES = ("ok", "cancelled", "error", *sorted(set(OUTCOMES.values())))
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The metric objects of one app, in a registry of their own."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlapi_requests",
            "Inference requests by model, version, outcome, protocol (http, grpc) and "
            "client (the name of the key; anonymous on a server with no key; empty when "
            "the key was refused).",
            ["model", "version", "outcome", "protocol", "client"],
            registry=r,
        )
        # The client whose outcomes exist from the start at 0 (an open server's
        # anonymous); with keys, each client's series come with its first request.
        self.precreated_client: str | None = ANONYMOUS
        self.request_duration = Histogram(
            "mlapi_request_duration_seconds",
            "Time from a request's headers to its response, inference routes.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "mlapi_inference_duration_seconds",
            "Time the runtime spent on one batch.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mlapi_batch_size",
            "Rows per batch given to the runtime.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.interrupted_runs = Counter(
            "mlapi_interrupted_runs",
            "Runs stopped part way because every request in them had been given up "
            "(its deadline passed, or its client left).",
            ["model", "version"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "mlapi_queue_depth",
            "Requests waiting in a model's batch queue.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inflight = Gauge(
            "mlapi_inflight_requests",
            "Inference requests being served.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_state = Gauge(
            "mlapi_model_state",
            "1 for the state a model version is in, else 0.",
            ["model", "version", "state"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.load_seconds = Gauge(
            "mlapi_model_load_seconds",
            "Time the model took to load.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.warmup_seconds = Gauge(
            "mlapi_model_warmup_seconds",
            "Time the model's warm-up inference took.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_loads = Counter(
            "mlapi_model_loads",
            "Model loads by reason: start (an eager model as the server starts), demand "
            "(an on-demand model's request), rollout (a new version, or a load through "
            "the repository API).",
            ["model", "reason"],
            registry=r,
        )
        self.model_evictions = Counter(
            "mlapi_model_evictions",
            "On-demand models unloaded by a worker's cache: for room (memory) or after "
            "idle_unload_s with no request (idle).",
            ["model", "reason"],
            registry=r,
        )
        self.model_resident = Gauge(
            "mlapi_model_resident",
            "Workers that hold an on-demand model loaded now (summed over workers).",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cold_start = Histogram(
            "mlapi_model_cold_start_seconds",
            "What a request to an on-demand model that was not loaded waited for its load.",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.rollouts = Counter(
            "mlapi_model_rollouts",
            "Model version changes by outcome: promoted (serves now), failed (did not "
            "load, verify or warm up), refused (did not fit in memory), rolled_back.",
            ["model", "outcome"],
            registry=r,
        )
        self.shadow_compared = Counter(
            "mlapi_shadow_compared",
            "Copies of live requests a shadow trial version answered and that were "
            "compared with what the serving version answered.",
            ["model", "version"],
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "mlapi_shadow_disagreements",
            "Compared requests whose output differed from the serving version's "
            "(output 'error': the trial version failed the request).",
            ["model", "version", "output"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "mlapi_shadow_dropped",
            "Copies for a shadow trial version dropped because its queue was full "
            "(it fell behind; the clients were answered as ever).",
            ["model", "version"],
            registry=r,
        )
        self.canary_percent = Gauge(
            "mlapi_canary_percent",
            "The share of requests a canary trial version answers now (percent).",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.payload_records = Counter(
            "mlapi_payload_records",
            "Requests written to the payload log (MLAPI_LOG_DIR/payloads).",
            ["model"],
            registry=r,
        )
        self.payload_dropped = Counter(
            "mlapi_payload_dropped",
            "Sampled requests not written to the payload log: the buffer was full "
            "(reason buffer) or the file could not be written (reason disk).",
            ["model", "reason"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "mlapi_drift_psi",
            "Population stability index of a feature (an input column, a BYTES input, "
            "an output) over the recent sampled requests against the version's reference.",
            ["model", "version", "feature"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.serving_version = Gauge(
            "mlapi_model_serving_version",
            "The newest version of a model that serves (0: none).",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.log_write_errors = Counter(
            "mlapi_log_write_errors",
            "Log records that could not be written to the log files.",
            registry=r,
        )
        self.build_info = Gauge(
            "mlapi_build_info",
            "Version of ml-api and of what it runs on (always 1).",
            ["version", "python"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.resident_memory = Gauge(
            "mlapi_process_resident_memory_bytes",
            "Resident memory of the server processes.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cpu_seconds = Counter(
            "mlapi_process_cpu_seconds", "CPU time used by the server processes.", registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._cpu_seen = 0.0
        self._log_errors_seen = 0

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def update_process(self, log_write_errors: int) -> None:
        """Refresh this process's own gauges (memory, CPU, log write errors)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        if cpu > self._cpu_seen:
            self.cpu_seconds.inc(cpu - self._cpu_seen)
            self._cpu_seen = cpu
        self.resident_memory.set(_resident_bytes())
        if log_write_errors > self._log_errors_seen:
            self.log_write_errors.inc(log_write_errors - self._log_errors_seen)
            self._log_errors_seen = log_write_errors

    def set_state(self, name: str, version: str, state: str) -> None:
        for candidate in STATES:
            self.model_state.labels(name, version, candidate).set(1 if candidate == state else 0)

    def expose(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class ModelMetrics:
    """The children of one model version, bound once so the hot path only adds."""

    def __init__(self, metrics: Metrics, name: str, version: str) -> None:
        self._metrics = metrics
        self.labels = (name, version)
        self.request_duration = metrics.request_duration.labels(name, version)
        self.inference_duration = metrics.inference_duration.labels(name, version)
        self.batch_size = metrics.batch_size.labels(name, version)
        self.interrupted_runs = metrics.interrupted_runs.labels(name, version)
        self.queue_depth = metrics.queue_depth.labels(name, version)
        self.inflight = metrics.inflight.labels(name, version)
        self.inflight_count = 0  # touched only on the event loop
        # Every outcome exists from the start at 0, so rate() and ratios over them
        # have data before the first error happens.
        client = metrics.precreated_client
        self._outcomes: dict[tuple[str, str, str], MetricWrapperBase] = {
            (outcome, protocol, client): metrics.requests.labels(
                name, version, outcome, protocol, client
            )
            for outcome in ALL_OUTCOMES
            for protocol in PROTOCOLS
            if client is not None
        }
        # Per-request numbers are gathered here, on the event loop, without the
        # metric objects' locks (which cost ~10% of throughput on one core under
        # load), and handed to them by flush() at each refresh.
        self._bounds = tuple(self.request_duration._upper_bounds)
        self._pending_outcomes: dict[tuple[str, str, str], int] = {}
        self._pending_buckets = [0] * len(self._bounds)
        self._pending_sum = 0.0

    def record(
        self, outcome: str, seconds: float, protocol: str = "http", client: str = ANONYMOUS
    ) -> None:
        """One finished request (event loop only)."""
        pending = self._pending_outcomes
        key = (outcome, protocol, client)
        pending[key] = pending.get(key, 0) + 1
        self._pending_buckets[bisect_left(self._bounds, seconds)] += 1
        self._pending_sum += seconds

    def flush(self) -> None:
        """Hand what record() gathered to the metric objects (event loop only)."""
        for (outcome, protocol, client), count in self._pending_outcomes.items():
            self.outcome(outcome, protocol, client).inc(count)
        self._pending_outcomes = {}
        buckets = self.request_duration._buckets
        for index, count in enumerate(self._pending_buckets):
            if count:
                buckets[index].inc(count)
                self._pending_buckets[index] = 0
        if self._pending_sum:
            self.request_duration._sum.inc(self._pending_sum)
            self._pending_sum = 0.0

    def outcome(self, outcome: str, protocol: str = "http", client: str = ANONYMOUS) -> Counter:
        key = (outcome, protocol, client)
        child = self._outcomes.get(key)
        if child is None:
            child = self._metrics.requests.labels(*self.labels, outcome, protocol, client)
            self._outcomes[key] = child
        return child  # type: ignore[return-value]

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference_duration.observe(seconds)

    def observe_interrupt(self) -> None:
        self.interrupted_runs.inc()

    def publish_load(self, queue_depth: int) -> None:
        """Gauges that change on every request are kept as plain numbers on the hot
        path and published here, when metrics are refreshed (each scrape, and every
        few seconds in each worker)."""
        self.queue_depth.set(queue_depth)
        self.inflight.set(self.inflight_count)
        self.flush()


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
