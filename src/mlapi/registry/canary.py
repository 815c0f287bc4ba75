"""A canary trial: the trial version answers a share of live requests, chosen by a
stable hash of a request key (``[rollout] canary_key``), in steps (``canary_percent``),
each at least ``step_s`` long and ``min_requests`` requests, under the error gate
and a latency gate. A breach ends it at once; past the last step it is promoted. A
decision goes to ``on_decision`` on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
import zlib
from collections import deque
from collections.abc import Callable

from mlapi.observability.metrics import Metrics
from mlapi.registry.versions import Bake, ModelVersion
from mlapi.repository.config import RolloutConfig

Decide = Callable[[str, str], None]  # (promoted | refused, why), called on the loop


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
        # the error gate is the bake's (a failure wakes the steps at once); the
        # latencies, (time, seconds) of each request, are the canary's own
        self._errors = Bake()
        self._trial_seen: deque[tuple[float, float]] = deque(maxlen=100_000)
        self._served_seen: deque[tuple[float, float]] = deque(maxlen=100_000)
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
        self._errors.record(failed)
        self._trial_seen.append((time.monotonic(), seconds))

    def watch_served(self, failed: bool, seconds: float) -> None:
        self._served_seen.append((time.monotonic(), seconds))

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
            alert = self._errors.alert
            with contextlib.suppress(TimeoutError):  # a server error wakes it at once
                await asyncio.wait_for(alert.wait(), min(0.25, rollout.window_s / 4))
            alert.clear()
            breach = self._errors.breached(rollout)
            if breach is not None:
                errors, seen = breach
                return (
                    f"{percent}: {errors} of {seen} requests failed on the server "
                    f"within {rollout.window_s:g}s (max_error_ratio {rollout.max_error_ratio:g})"
                )
            if time.monotonic() - started < rollout.step_s:
                continue
            trial = [s for t, s in list(self._trial_seen) if t >= started]
            served = [s for t, s in list(self._served_seen) if t >= started]
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
