"""The gate a new version passes before it serves everyone (``[rollout] strategy``).

Shadow: the version that serves answers every client; a sample of its requests
(inputs, outputs) is copied into a bounded queue, and a thread of lower priority
runs the trial version on them and compares (``compare``). The client never waits
for it: a copy is one queue put, and when the trial falls behind, copies are
dropped and counted. Canary: the trial answers a share of requests, chosen by a
stable hash of a request key, step by step, under the error gate and a latency
gate. Either ends with a decision handed to ``on_decision`` on the event loop,
which records it in the repository (so every worker and replica acts on it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import statistics
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlapi.observability.metrics import Metrics
from mlapi.registry.compare import ERROR_OUTPUT, Comparison
from mlapi.registry.loading import stackable
from mlapi.registry.versions import ModelVersion
from mlapi.repository.config import RolloutConfig

log = logging.getLogger("mlapi.registry")
Decide = Callable[[str, str], None]  # (promoted | refused, why), called on the loop
SHADOW_QUEUE = 256  # copies waiting for the trial; more are dropped
SHADOW_NICE = 10  # the trial's thread yields the CPU to the threads that answer clients
SAMPLES_KEPT = 32  # disagreeing requests written to the logs volume, per worker
SAMPLE_VALUES = 64  # values of each tensor shown in such a record


class _Copy:
    __slots__ = ("inputs", "outputs", "request_id", "rows")

    def __init__(
        self, request_id: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        self.request_id, self.inputs, self.outputs = request_id, inputs, outputs
        first = next(iter(inputs.values()), None)
        self.rows = int(first.shape[0]) if first is not None and first.ndim else 1

    def key(self) -> tuple[object, ...] | None:
        """What must match for copies to run as one batch (None: runs alone)."""
        parts: list[object] = [tuple(self.outputs)]
        for name, array in self.inputs.items():
            if array.ndim == 0 or array.shape[0] != self.rows:
                return None
            parts.append((name, array.shape[1:], array.dtype.str))
        return tuple(parts)


class Shadow:
    """A trial version that sees copies of live requests and is compared."""

    strategy = "shadow"

    def __init__(
        self,
        trial: ModelVersion,
        rollout: RolloutConfig,
        metrics: Metrics,
        on_decision: Decide,
        samples: Path | None,
    ) -> None:
        self.trial = trial
        self.rollout = rollout
        self.comparison = Comparison(rollout.tolerance)
        self._queue: queue.Queue[_Copy | None] = queue.Queue(SHADOW_QUEUE)
        self._on_decision = on_decision
        self._samples = samples
        self._samples_written = 0
        labels = (trial.name, str(trial.version))
        self._compared = metrics.shadow_compared.labels(*labels)
        self._dropped = metrics.shadow_dropped.labels(*labels)
        self._disagreements = metrics.shadow_disagreements
        for output in [*(spec.name for spec in trial.signature.outputs), ERROR_OUTPUT]:
            self._disagreements.labels(*labels, output)  # each output's series from 0
        assert trial.runtime is not None and trial.config is not None
        self._runtime = trial.runtime
        self._batchable = trial.config.batching.enabled and stackable(trial.runtime.signature)
        self._max_rows = trial.config.batching.max_batch_size
        self._thread = threading.Thread(
            target=self._work, name=f"shadow-{trial.name}-{trial.version}", daemon=True
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.decided = False
        self.served: ModelVersion | None = None  # the version whose answers are copied

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def stop(self) -> None:
        """No more copies; the thread ends after the run it is in (not waited for)."""
        self.decided = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def done(self) -> bool:
        return self.decided and not self._thread.is_alive()

    async def finished(self, within_s: float) -> None:
        """Wait (at most ``within_s``) for the thread to leave the trial's runtime."""
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, within_s)

    # ----- on the event loop, for each request the serving version answered -------
    def offer(
        self,
        request_id: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Copy a request for the trial, if sampled; dropped (counted) when it is full."""
        if self.rollout.shadow_fraction < 1.0 and random.random() >= self.rollout.shadow_fraction:
            return
        try:
            self._queue.put_nowait(_Copy(request_id, inputs, outputs))
        except queue.Full:
            self.comparison.dropped += 1
            self._dropped.inc()

    def served_cost(self, rows: int, seconds: float) -> None:
        """The serving version's batcher reports each run's time here."""
        self.comparison.cost("served", rows, seconds)

    def summary(self) -> dict[str, object]:
        return {"strategy": self.strategy, "worker": os.getpid(), **self.comparison.summary()}

    # ----- on the shadow's own thread ----------------------------------------------
    def _work(self) -> None:
        _lower_priority()
        started = time.monotonic()
        while not self.decided:
            try:
                first = self._queue.get(timeout=0.25)
            except queue.Empty:
                first = None
            if first is not None:
                for group in self._groups(first):
                    self._run(group)
            elif not self._queue.empty():
                continue  # the stop's None: decided elsewhere
            verdict = self.comparison.verdict(self.rollout, time.monotonic() - started)
            if verdict is not None and not self.decided:
                self.decided = True
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(self._on_decision, *verdict)
                return

    def _groups(self, first: _Copy) -> list[list[_Copy]]:
        """What waits, in batches of copies that stack (at most max_batch_size rows)."""
        copies = [first]
        rows = first.rows
        while rows < self._max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.decided = True
                break
            copies.append(item)
            rows += item.rows
        if not self._batchable:
            return [[c] for c in copies]
        groups: dict[object, list[_Copy]] = {}
        alone: list[list[_Copy]] = []
        for copy in copies:
            key = copy.key()
            if key is None:
                alone.append([copy])
            else:
                groups.setdefault(key, []).append(copy)
        return [*groups.values(), *alone]

    def _run(self, group: list[_Copy]) -> None:
        names = tuple(group[0].outputs)
        if len(group) == 1:
            inputs = group[0].inputs
        else:
            inputs = {
                name: np.concatenate([c.inputs[name] for c in group]) for name in group[0].inputs
            }
        rows = sum(c.rows for c in group)
        try:
            started = time.perf_counter()
            outputs = self._runtime.predict(inputs, names)
            self.comparison.cost("trial", rows, time.perf_counter() - started)
            if len(group) > 1 and any(
                out.ndim == 0 or out.shape[0] != rows for out in outputs.values()
            ):
                raise ValueError("outputs do not follow the batch dimension")
        except Exception:
            if len(group) > 1:  # one copy that fails must not fail its neighbours
                for copy in group:
                    self._run([copy])
                return
            self.comparison.failed(group[0].request_id)
            self._counted(group[0], [ERROR_OUTPUT], None)
            return
        start = 0
        for copy in group:
            end = start + copy.rows
            answer = outputs if len(group) == 1 else {n: o[start:end] for n, o in outputs.items()}
            start = end
            differing = self.comparison.add(copy.request_id, copy.outputs, answer)
            self._counted(copy, differing, answer)

    def _counted(
        self, copy: _Copy, differing: Sequence[str], answer: Mapping[str, np.ndarray] | None
    ) -> None:
        self._compared.inc()
        labels = (self.trial.name, str(self.trial.version))
        for output in differing:
            self._disagreements.labels(*labels, output).inc()
        if differing and self._samples is not None and self._samples_written < SAMPLES_KEPT:
            self._samples_written += 1
            self._write_sample(copy, differing, answer)

    def _write_sample(
        self, copy: _Copy, differing: Sequence[str], answer: Mapping[str, np.ndarray] | None
    ) -> None:
        """One disagreeing request, a JSON line in the logs volume (one write: whole)."""
        assert self._samples is not None
        record = {
            "time": time.time(),
            "model": self.trial.name,
            "trial_version": self.trial.version,
            "request_id": copy.request_id,
            "differs": list(differing),
            "inputs": _shown(copy.inputs),
            "served": _shown(copy.outputs),
            "trial": _shown(answer) if answer is not None else "failed",
        }
        try:
            self._samples.parent.mkdir(parents=True, exist_ok=True)
            line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            fd = os.open(self._samples, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except (OSError, TypeError) as exc:
            self._samples_written = SAMPLES_KEPT  # once is enough to say it
            log.warning("shadow samples cannot be written: %s", type(exc).__name__)


class Canary:
    """A trial version that answers a share of live requests, in steps."""

    strategy = "canary"

    def __init__(
        self,
        trial: ModelVersion,
        served: ModelVersion,
        rollout: RolloutConfig,
        metrics: Metrics,
        on_decision: Decide,
    ) -> None:
        self.trial, self.served, self.rollout = trial, served, rollout
        self._on_decision = on_decision
        self._gauge = metrics.canary_percent.labels(trial.name, str(trial.version))
        self.key = rollout.canary_key
        self.step = 0
        self.threshold = 0  # of 10,000: a request whose key hashes below goes to the trial
        self.alert = asyncio.Event()
        self._trial_seen: deque[tuple[float, bool, float]] = deque(maxlen=100_000)
        self._served_seen: deque[tuple[float, bool, float]] = deque(maxlen=100_000)
        self.decided = False
        self.task: asyncio.Task[None] | None = None
        self._share(0)

    def stop(self) -> None:
        """No more requests to the trial; its steps end (unless they are what ends it)."""
        self.decided = True
        self.threshold = 0
        self._gauge.set(0)
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _share(self, step: int) -> None:
        self.step = step
        percent = self.rollout.canary_percent[step]
        self.threshold = round(percent * 100)
        self._gauge.set(percent)

    def done(self) -> bool:
        return self.decided

    async def finished(self, within_s: float) -> None:
        """Its steps run on the loop and end with ``stop``: nothing to wait for."""

    # ----- on the request path ------------------------------------------------------
    def picks(self, key: str | None) -> bool:
        """Whether a request with this key goes to the trial: a stable hash, so the
        same key always meets the same version within a step (and, as steps only
        grow, keeps the trial once it has it); no key: chosen at random."""
        if key is None:
            return random.random() * 10_000 < self.threshold
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % 10_000 < self.threshold

    def watch_trial(self, failed: bool, seconds: float) -> None:
        self._trial_seen.append((time.monotonic(), failed, seconds))
        if failed:
            self.alert.set()

    def watch_served(self, failed: bool, seconds: float) -> None:
        self._served_seen.append((time.monotonic(), failed, seconds))

    def summary(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "worker": os.getpid(),
            "percent": self.rollout.canary_percent[self.step],
            "step": self.step + 1,
            "steps": len(self.rollout.canary_percent),
            "answered": len(self._trial_seen),
        }

    # ----- its steps ----------------------------------------------------------------
    async def run(self) -> None:
        rollout = self.rollout
        for step in range(len(rollout.canary_percent)):
            self._share(step)
            verdict = await self._bake_step(time.monotonic())
            if verdict is not None:
                self._decide("refused", verdict)
                return
        percents = ", ".join(f"{p:g}%" for p in rollout.canary_percent)
        self._decide("promoted", f"canary passed {percents} ({len(self._trial_seen):,} requests)")

    def _decide(self, decision: str, reason: str) -> None:
        self.decided = True
        self.threshold = 0 if decision == "refused" else self.threshold
        self._on_decision(decision, reason)

    async def _bake_step(self, started: float) -> str | None:
        """Why the step failed, or None once it lasted step_s and saw min_requests."""
        rollout = self.rollout
        percent = f"canary at {rollout.canary_percent[self.step]:g}%"
        while True:
            with contextlib.suppress(TimeoutError):  # a server error wakes it at once
                await asyncio.wait_for(self.alert.wait(), min(0.25, rollout.window_s / 4))
            self.alert.clear()
            horizon = time.monotonic() - rollout.window_s
            recent = [failed for t, failed, _ in list(self._trial_seen) if t >= horizon]
            errors = sum(recent)
            if len(recent) >= rollout.min_requests and errors > rollout.max_error_ratio * len(
                recent
            ):
                return (
                    f"{percent}: {errors} of {len(recent)} requests failed on the server "
                    f"within {rollout.window_s:g}s (max_error_ratio {rollout.max_error_ratio:g})"
                )
            if time.monotonic() - started < rollout.step_s:
                continue
            trial = [s for t, _, s in list(self._trial_seen) if t >= started]
            served = [s for t, _, s in list(self._served_seen) if t >= started]
            if len(trial) < rollout.min_requests:
                continue  # not enough evidence yet: the step goes on
            if len(served) >= rollout.min_requests:
                ratio = statistics.median(trial) / max(statistics.median(served), 1e-9)
                if ratio > rollout.max_latency_ratio:
                    return (
                        f"{percent}: latency ratio {ratio:.2f} > {rollout.max_latency_ratio:g} "
                        f"(median {statistics.median(trial) * 1000:.2f} ms against "
                        f"{statistics.median(served) * 1000:.2f} ms on {len(trial):,} requests)"
                    )
            return None


def _lower_priority() -> None:
    """This thread (Linux: the nice value is a thread's) yields to the serving ones."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)


def _shown(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, array in tensors.items():
        flat = array.reshape(-1)[:SAMPLE_VALUES]
        values = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in flat.tolist()]
        shown[name] = {"shape": list(array.shape), "data": values}
    return shown
