"""A model's versions and their life: LOADING -> WARMING -> READY, or FAILED with a
reason; UNLOADING -> UNAVAILABLE when removed. An on-demand model's versions wait
as LOADABLE (files verified, not loaded) until a request loads them, and go back to
LOADABLE when the cache evicts them. A record holds the versions that
serve and, while a rollout runs, the candidate that may replace one of them."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlapi.batching import Batcher, Gone, QueuedTooLong
from mlapi.errors import GatewayTimeout, InsufficientMemory, NotFound, NotReady
from mlapi.observability.metrics import ModelMetrics
from mlapi.repository.config import ModelConfig, RolloutConfig
from mlapi.runtimes.base import Runtime
from mlapi.tensors import Signature

if TYPE_CHECKING:
    from mlapi.registry.canary import Canary
    from mlapi.registry.shadow import Shadow


class State(StrEnum):
    LOADING = "LOADING"
    WARMING = "WARMING"
    READY = "READY"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"
    LOADABLE = "LOADABLE"


_COLD = (State.LOADABLE, State.LOADING, State.WARMING)  # on demand: a request waits for it


class Cold(NotReady):
    """An on-demand model that is not loaded in this worker: the data plane loads it
    and waits (ModelRegistry.demand); a route that only asks says LOADABLE."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' is not loaded; its next request loads it (on demand)")
        self.name = name


class Bake:
    """A switched-in version's requests over its bake window: (time, failed?) of
    each, and an event set at once on a failure so the watcher looks without delay."""

    __slots__ = ("alert", "outcomes")

    def __init__(self) -> None:
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.alert = asyncio.Event()

    def record(self, failed: bool) -> None:
        self.outcomes.append((time.monotonic(), failed))
        if failed:
            self.alert.set()

    def failures_within(self, window_s: float) -> tuple[int, int]:
        """(failed, all) of the requests of the last ``window_s`` seconds."""
        horizon = time.monotonic() - window_s
        outcomes = self.outcomes
        while outcomes and outcomes[0][0] < horizon:
            outcomes.popleft()
        return sum(1 for _, failed in outcomes if failed), len(outcomes)

    def breached(self, rollout: RolloutConfig) -> tuple[int, int] | None:
        """(failed, all) when the window's failures pass the rollout's gate: at least
        ``min_requests`` requests, more than ``max_error_ratio`` of them failed."""
        errors, seen = self.failures_within(rollout.window_s)
        if seen >= rollout.min_requests and errors > rollout.max_error_ratio * seen:
            return errors, seen
        return None


@dataclass(eq=False)
class ModelVersion:
    """One loaded (or loading, or failed) version of a model."""

    name: str
    version: int
    path: Path
    config: ModelConfig | None
    state: State = State.LOADING
    reason: str | None = None
    runtime: Runtime | None = None
    runtime_name: str | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    executor: ThreadPoolExecutor | None = None
    batcher: Batcher | None = None
    metrics: ModelMetrics | None = None
    timeout_s: float = 30.0
    withdrawn: bool = False  # unloaded: a load still running for it must not finish it
    fingerprint: str = ""  # what its files were when it was loaded (repository.files)
    holders: int = 0  # inference requests that resolved to this version and are not done
    refused: bool = False  # FAILED because it would not fit in memory
    bake: Bake | None = None  # while it bakes after a switch: what its requests did
    # while a gated rollout runs beside it: the trial version this one's answers are
    # copied to (shadow), or the canary that takes a share of its requests
    shadow: Shadow | None = None
    canary: Canary | None = None
    # each request's outcome and latency, while a canary compares it (canary.Canary)
    watch: Callable[[bool, float], None] | None = None
    on_demand: bool = False  # its model loads on demand: checked against a worker's share
    measured: int = 0  # bytes its load added to this worker's resident memory
    measured_peak: int = 0  # the most its load added for a while (the next load's need)

    # ----- what a request does to it: hold it while it runs, release with its outcome
    def hold(self) -> None:
        """A request resolved to this version: a replacement waits for it."""
        self.holders += 1

    def release(self, failed: bool, seconds: float = 0.0) -> None:
        """A request that held this version is done (after ``seconds``); ``failed``
        when it failed for a reason that is this version's (a server error, or its own
        run timing out), which counts against it while it bakes or is a canary."""
        self.holders -= 1
        if self.bake is not None:
            self.bake.record(failed)
        if self.watch is not None:
            self.watch(failed, seconds)

    def fail(self, reason: str, refused: bool = False) -> None:
        """FAILED, with the reason shown in readiness and the repository index (the
        caller has put its files' paths relative to the version folder)."""
        # a reason may quote a file's name of raw bytes: kept printable for the JSON
        # index, the logs and error bodies
        reason = reason.encode(errors="backslashreplace").decode()
        self.state, self.reason, self.refused = State.FAILED, reason, refused

    def failed_copy(self, reason: str) -> ModelVersion:
        """A FAILED record of this version for the index, holding nothing (a version
        rolled back or refused: what it held is retired), not tried again until its
        files change."""
        copy = self._bare_copy()
        copy.fail(reason)
        return copy

    def loadable_copy(self) -> ModelVersion:
        """A LOADABLE record of this version (an on-demand model evicted, or checked
        and waiting for its first request), holding nothing."""
        copy = self._bare_copy()
        copy.state, copy.on_demand = State.LOADABLE, True
        return copy

    def _bare_copy(self) -> ModelVersion:
        """The same version's record, holding nothing (LOADING until told otherwise)."""
        return ModelVersion(
            self.name,
            self.version,
            self.path,
            self.config,
            timeout_s=self.timeout_s,
            fingerprint=self.fingerprint,
            on_demand=self.on_demand,
        )

    def busy(self) -> bool:
        """Whether a request holds it (in flight, or queued in its batcher)."""
        batcher = self.batcher
        return self.holders > 0 or (batcher is not None and batcher.queue_depth > 0)

    # ----- its life: loaded, warmed and serving; withdrawn; gone -------------------
    def loaded(self, runtime: Runtime, runtime_name: str, seconds: float) -> None:
        """Its runtime is loaded: WARMING."""
        self.runtime, self.runtime_name, self.load_seconds = runtime, runtime_name, seconds
        self.state = State.WARMING

    def serving(
        self,
        warmup_seconds: float,
        executor: ThreadPoolExecutor,
        metrics: ModelMetrics,
        batcher: Batcher,
    ) -> bool:
        """Warmed up, with its thread, metrics and batcher: READY; unless it was
        withdrawn meanwhile (unloaded while it loaded), then freed and UNAVAILABLE.
        Whether it serves."""
        self.warmup_seconds = warmup_seconds
        self.executor, self.metrics, self.batcher = executor, metrics, batcher
        if self.withdrawn:
            self.close()
            self.state = State.UNAVAILABLE
            return False
        self.state = State.READY
        return True

    def withdraw(self) -> None:
        """Unloaded through the API: no new request routes here, and a load still
        running for it frees it instead of serving it."""
        self.state = State.UNLOADING
        self.withdrawn = True

    async def unload_now(self) -> None:
        """Stop and free it at once (requests it holds get a 503): UNAVAILABLE."""
        await self.aclose()
        self.state = State.UNAVAILABLE

    @property
    def signature(self) -> Signature:
        return self.loaded_runtime().signature

    def loaded_runtime(self) -> Runtime:
        """The runtime; NotReady if it was unloaded (say, by a reload or an unload that
        happened while a request holding this version was reading its body)."""
        runtime = self.runtime
        if runtime is None:
            raise NotReady(f"model '{self.name}' version {self.version} is not loaded")
        return runtime

    def admit(self) -> None:
        """Refuse early (503) when this version's queue is full."""
        if self.batcher is not None:
            self.batcher.admit()

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        output_names: Sequence[str],
        gone: Gone | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model through its batcher, on its own worker thread."""
        batcher = self.batcher
        if batcher is None or self.state is not State.READY:  # READY until retired
            raise NotReady(f"model '{self.name}' version {self.version} is not ready")
        try:
            return await batcher.submit(inputs, tuple(output_names), gone, self.timeout_s)
        except TimeoutError as exc:
            # the batcher withdrew the queued work at the deadline; a running batch's
            # result for this request is dropped
            raise GatewayTimeout(
                f"model '{self.name}' did not answer within {self.timeout_s:g}s "
                f"(MLAPI_REQUEST_TIMEOUT_S)",
                queued=isinstance(exc, QueuedTooLong),
            ) from None

    def describe(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "name": self.name,
            "version": str(self.version),
            "state": self.state.value,
        }
        if self.reason:
            shown["reason"] = self.reason
        return shown

    async def retire(self, within_s: float) -> None:
        """Leave serving gracefully: no request is routed here any more (the caller has
        swapped another in); the requests that already hold this version, queued or
        still sending their body, are answered here; then the model is freed. Waits at
        most ``within_s`` for them."""
        self.withdrawn = True  # a load still running for it frees it, never serves it
        deadline = time.monotonic() + within_s
        while self.holders > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.state = State.UNLOADING
        await self.aclose()
        self.state = State.UNAVAILABLE

    async def aclose(self) -> None:
        """Stop the batcher (queued requests get a 503), then free the model."""
        if self.metrics is not None:
            self.metrics.flush()
        if self.batcher is not None:
            await self.batcher.close()
            self.batcher = None
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None


@dataclass(eq=False)
class ModelRecord:
    """A model folder and the versions its policy selects."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str | None = None  # a model-level problem: no versions, pinned version missing
    unloaded: bool = False  # explicitly unloaded through the repository API
    retired: tuple[int, ...] = ()  # the versions an unload took away
    # a rollout's candidate versions while they load, then those that failed (shown in
    # the index, never served; the versions that serve are untouched by them)
    candidates: dict[int, ModelVersion] = field(default_factory=dict)
    rollout_error: str | None = None  # the folder as it is now cannot be read (while one serves)
    # what a switch replaced, kept loaded (never routed to) while the new version bakes
    previous: dict[int, ModelVersion] = field(default_factory=dict)
    rolled_back: dict[int, str] = field(default_factory=dict)  # version -> why (repository marks)
    refused: dict[int, str] = field(default_factory=dict)  # by a gate: version -> why (marks)
    # a gated rollout's new version, loaded beside what serves, and its gate
    trial: ModelVersion | None = None
    gate: Shadow | Canary | None = None
    cache: Residence | None = None  # an on-demand model: its life in this worker's cache

    def ready_version(self, version: int | None) -> ModelVersion:
        if version is not None:
            found = self.versions.get(version)
            if found is None:
                raise NotFound(f"model '{self.name}' has no version {version}")
            if found.state is not State.READY:
                if self.cache is not None and found.state in _COLD:
                    raise Cold(self.name)
                raise NotReady(_not_ready(found))
            return found
        ready = [v for v in self.versions.values() if v.state is State.READY]
        if not ready:
            if self.error:
                raise NotReady(f"model '{self.name}' is not ready: {self.error}")
            if self.cache is not None and any(v.state in _COLD for v in self.versions.values()):
                raise Cold(self.name)  # a request loads it, or joins the load under way
            too_big = [v for v in self.versions.values() if v.refused and self.cache is not None]
            if too_big:  # on demand, and too big for a worker's share on its own
                why = too_big[0].reason
                raise InsufficientMemory(f"model '{self.name}' cannot be loaded: {why}")
            newest = max(self.versions.values(), key=lambda v: v.version, default=None)
            raise NotReady(_not_ready(newest) if newest else f"model '{self.name}' is not ready")
        return max(ready, key=lambda v: v.version)

    def serves(self) -> bool:
        """Whether some version of this model answers requests now."""
        return any(v.state is State.READY for v in self.versions.values())

    @property
    def is_ready(self) -> bool:
        """Every selected version serves, or (on demand) can be loaded by a request."""
        fine = (State.READY, State.LOADABLE) if self.cache is not None else (State.READY,)
        return (
            self.error is None
            and bool(self.versions)
            and all(v.state in fine for v in self.versions.values())
        )

    def describe(self, with_candidates: bool = False) -> list[dict[str, object]]:
        """One item per version that serves (readiness); with the candidates too (the
        repository index), each marked ``"candidate": true``."""
        if self.unloaded:
            return [{"name": self.name, "state": State.UNAVAILABLE.value, "reason": "unloaded"}]
        if self.error:
            return [{"name": self.name, "state": State.FAILED.value, "reason": self.error}]
        items = [v.describe() for v in sorted(self.versions.values(), key=lambda v: v.version)]
        if with_candidates and self.cache is not None:
            shown_cache = self.cache.summary()
            for item in items:
                item["cache"] = shown_cache
        for item in items:  # marked rolled back by another server, not yet replaced here
            why = self.rolled_back.get(int(str(item["version"])))
            if why is not None:
                item["reason"] = f"{why}; serving here until its replacement is READY"
        if with_candidates:
            for candidate in sorted(self.candidates.values(), key=lambda v: v.version):
                items.append({**candidate.describe(), "candidate": True})
            for kept in sorted(self.previous.values(), key=lambda v: v.version):
                items.append({**kept.describe(), "previous": True})
            if self.trial is not None:
                gate = self.gate
                shown_gate = gate.summary() if gate is not None else {"strategy": "deciding"}
                items.append({**self.trial.describe(), "trial": shown_gate})
            shown = {int(str(item["version"])) for item in items if "version" in item}
            marked = [(self.rolled_back, "ROLLED_BACK"), (self.refused, "REFUSED")]
            for marks, state in marked:
                for number, why in sorted(marks.items()):
                    if number not in shown:
                        item = {"name": self.name, "version": str(number), "state": state}
                        items.append({**item, "reason": why})
            if self.rollout_error:
                failed = State.FAILED.value
                items.append(
                    {
                        "name": self.name,
                        "state": failed,
                        "reason": self.rollout_error,
                        "candidate": True,
                    }
                )
        return items


@dataclass(eq=False)
class Residence:
    """An on-demand model's life in one worker's cache: when it was last asked for,
    when it loaded, what it measured, how often it loaded and was evicted."""

    pin: bool = False  # never evicted once loaded
    min_resident_s: float = 30.0
    idle_unload_s: float = 0.0  # 0: only evicted for room
    last_used: float = 0.0  # time.monotonic() of its last request (0: none yet)
    last_used_at: float = 0.0  # time.time() of the same, for the index
    loaded_at: float = 0.0  # time.monotonic() when it became READY (0: not loaded)
    measured: int = 0  # bytes its last load added to this worker's resident memory
    draining: bool = False  # to be evicted once idle: new requests wait for its next load
    # a gated rollout's trial version the folder names, started at the model's next load
    pending_trial: ModelVersion | None = None
    loads: dict[str, int] = field(default_factory=dict)  # reason -> count
    evictions: dict[str, int] = field(default_factory=dict)  # reason -> count
    # what each version's last load here showed, for metadata while it is not loaded:
    # version -> (its files' fingerprint, its signature, its platform)
    described: dict[int, tuple[str, Signature, str]] = field(default_factory=dict)

    def used(self) -> None:
        now = time.monotonic()
        if now - self.last_used > 0.5:  # the wall time only when it moves: a cheap hot path
            self.last_used_at = time.time()
        self.last_used = now

    def summary(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "pinned": self.pin,
            "resident": self.loaded_at > 0,
            "loads": dict(self.loads),
            "evictions": dict(self.evictions),
        }
        if self.last_used_at:
            shown["last_used"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_used_at))
        if self.measured:
            shown["memory_mb"] = round(self.measured / (1 << 20), 1)
        return shown


def _not_ready(version: ModelVersion) -> str:
    text = f"model '{version.name}' version {version.version} is {version.state.value}"
    return f"{text}: {version.reason}" if version.reason else text
