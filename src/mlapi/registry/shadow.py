"""A shadow trial: the version that serves answers every client; a sample of its
requests (inputs and answer) is copied into a bounded buffer, and a thread of lower
priority runs the trial version on them and compares (``compare``). The client
never waits for it: a copy is one append on the event loop, and when the trial
falls behind, copies are dropped and counted.

The thread works in bulk, so that what it costs per copy stays far below what a
request costs: it lets copies gather for GATHER_S (or until a batch is full), runs
those that stack as one batch, compares each output of the whole batch in one
array operation, and counts once per batch. Only a disagreeing copy is looked at
alone (its label changes, the sample written to the logs volume). A decision goes
to ``on_decision`` on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
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
SHADOW_QUEUE = 1024  # copies waiting for the trial; more are dropped
SHADOW_MAX_BYTES = 64 << 20  # ... and no more than this of their tensors held at once
GATHER_S = 0.02  # copies gather this long (or until a batch is full) before a run
SHADOW_NICE = 19  # where SCHED_IDLE is refused: the lowest priority a nice value gives
SAMPLES_KEPT = 32  # disagreeing requests written to the logs volume, per worker
SAMPLE_VALUES = 64  # values of each tensor shown in such a record

# (request id or None, inputs, the served answer)
Copy = tuple[str | None, dict[str, np.ndarray], dict[str, np.ndarray]]


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
        self._copies: deque[Copy] = deque()
        # the tensors' bytes held by waiting copies: in (the loop's), out (the thread's)
        self._bytes_in = 0
        self._bytes_out = 0
        self._wake = threading.Event()
        self._idle = False
        self._on_decision = on_decision
        self._samples = samples
        self._samples_written = 0
        self._unnamed = 0  # copies without a request id get "copy-<n>"
        labels = (trial.name, str(trial.version))
        self._compared = metrics.shadow_compared.labels(*labels)
        self._dropped = metrics.shadow_dropped.labels(*labels)
        self._disagreements = {
            output: metrics.shadow_disagreements.labels(*labels, output)  # each from 0
            for output in [*(spec.name for spec in trial.signature.outputs), ERROR_OUTPUT]
        }
        self._metric = metrics.shadow_disagreements
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
        """No more copies; the thread ends after the run it is in."""
        self.decided = True
        self._wake.set()

    def done(self) -> bool:
        return self.decided and not self._thread.is_alive()

    async def finished(self, within_s: float) -> None:
        """Wait (at most ``within_s``) for the thread to leave the trial's runtime."""
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, within_s)

    # ----- on the event loop, for each request the serving version answered -------
    def offer(
        self,
        request_id: str | None,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Copy a request for the trial, if sampled; dropped (counted) when it is full."""
        fraction = self.rollout.shadow_fraction
        if fraction < 1.0 and random.random() >= fraction:
            return
        size = _nbytes(inputs) + _nbytes(outputs)
        held = self._bytes_in - self._bytes_out
        if len(self._copies) >= SHADOW_QUEUE or held + size > SHADOW_MAX_BYTES:
            self.comparison.dropped += 1
            self._dropped.inc()
            return
        self._bytes_in += size
        self._copies.append((request_id, inputs, outputs))
        if self._idle:
            self._wake.set()

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
            if not self._copies:
                self._idle = True
                if not self._copies:  # (one may have come between the look and the flag)
                    self._wake.wait(0.25)
                self._wake.clear()
                self._idle = False
            elif len(self._copies) < self._max_rows:
                time.sleep(GATHER_S)  # let a batch gather: one run, one comparison
            for group in self._groups():
                self._run(group)
            verdict = self.comparison.verdict(self.rollout, time.monotonic() - started)
            if verdict is not None and not self.decided:
                self.decided = True
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(self._on_decision, *verdict)
                return

    def _groups(self) -> list[list[Copy]]:
        """What waits (at most a batch of max_batch_size rows), in groups that stack."""
        taken: list[Copy] = []
        rows = 0
        while self._copies and rows < self._max_rows:
            copy = self._copies.popleft()
            self._bytes_out += _nbytes(copy[1]) + _nbytes(copy[2])
            taken.append(copy)
            rows += _rows(copy[1])
        if not self._batchable:
            return [[c] for c in taken]
        groups: dict[object, list[Copy]] = {}
        alone: list[list[Copy]] = []
        for copy in taken:
            key = _key(copy)
            if key is None:
                alone.append([copy])
            else:
                groups.setdefault(key, []).append(copy)
        return [*groups.values(), *alone]

    def _run(self, group: list[Copy]) -> None:
        names = tuple(group[0][2])
        sizes = [_rows(c[1]) for c in group]
        if len(group) == 1:
            inputs = group[0][1]
        else:
            inputs = {n: np.concatenate([c[1][n] for c in group]) for n in group[0][1]}
        try:
            started = time.perf_counter()
            outputs = self._runtime.predict(inputs, names)
            self.comparison.cost("trial", sum(sizes), time.perf_counter() - started)
            if len(group) > 1 and any(
                out.ndim == 0 or out.shape[0] != sum(sizes) for out in outputs.values()
            ):
                raise ValueError("outputs do not follow the batch dimension")
        except Exception:
            if len(group) > 1:  # one copy that fails must not fail its neighbours
                for copy in group:
                    self._run([copy])
                return
            request_id = self._id(group[0])
            self.comparison.failed(request_id)
            self._compared.inc()
            self._disagreement(ERROR_OUTPUT, 1)
            self._sample(request_id, group[0], [ERROR_OUTPUT], None)
            return
        ids = [c[0] for c in group]
        differing = self.comparison.add_batch(ids, [c[2] for c in group], outputs, sizes)
        self._compared.inc(len(group))
        for output, times in _counts(differing).items():
            self._disagreement(output, times)
        starts = np.cumsum([0, *sizes])
        for index, names_differing in enumerate(differing):
            if names_differing and self._samples_written < SAMPLES_KEPT:
                answer = {n: o[starts[index] : starts[index + 1]] for n, o in outputs.items()}
                self._sample(self._id(group[index]), group[index], names_differing, answer)

    def _id(self, copy: Copy) -> str:
        if copy[0] is not None:
            return copy[0]
        self._unnamed += 1
        return f"copy-{self._unnamed}"

    def _disagreement(self, output: str, times: int) -> None:
        counter = self._disagreements.get(output)
        if counter is None:  # an output the signature does not list
            labels = (self.trial.name, str(self.trial.version), output)
            counter = self._disagreements.setdefault(output, self._metric.labels(*labels))
        counter.inc(times)

    def _sample(
        self,
        request_id: str,
        copy: Copy,
        differing: Sequence[str],
        answer: Mapping[str, np.ndarray] | None,
    ) -> None:
        """One disagreeing request, a JSON line in the logs volume (one write: whole)."""
        if self._samples is None or self._samples_written >= SAMPLES_KEPT:
            return
        self._samples_written += 1
        record = {
            "time": time.time(),
            "model": self.trial.name,
            "trial_version": self.trial.version,
            "request_id": request_id,
            "differs": list(differing),
            "inputs": _shown(copy[1]),
            "served": _shown(copy[2]),
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


def _nbytes(tensors: Mapping[str, np.ndarray]) -> int:
    return sum(array.nbytes for array in tensors.values())


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _key(copy: Copy) -> tuple[object, ...] | None:
    """What must match for copies to run as one batch (None: runs alone)."""
    inputs = copy[1]
    rows = _rows(inputs)
    if rows < 1:
        return None
    parts: list[object] = [tuple(copy[2])]
    for name, array in inputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            return None
        parts.append((name, array.shape[1:], array.dtype.str))
    for name, array in copy[2].items():  # the served answers must stack too
        if array.ndim == 0 or array.shape[0] != rows:
            return None
        parts.append((name, array.shape[1:], array.dtype.str))
    return tuple(parts)


def _counts(differing: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for names in differing:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _lower_priority() -> None:
    """This thread yields the CPU to the ones that answer clients: Linux's SCHED_IDLE
    (it runs on what the server leaves idle), else the lowest nice value. Both are a
    thread's own on Linux, and a thread may lower its own without privileges."""
    thread = threading.get_native_id()
    try:
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, thread, SHADOW_NICE)


def _shown(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, array in tensors.items():
        flat = array.reshape(-1)[:SAMPLE_VALUES]
        values = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in flat.tolist()]
        shown[name] = {"shape": list(array.shape), "data": values}
    return shown
