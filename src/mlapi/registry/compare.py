"""What a shadow rollout measures: the trial version's answers to copies of live
requests against what the serving version answered them, and what each costs.

A request agrees when every output it asked for agrees: labels, strings, integers
and booleans equal; numbers within ``tolerance`` (relative above 1 in magnitude,
absolute below: 1e-4 lets 0.50003 equal 0.5 and 1000.09 equal 1000); the same
shape and the same kind of value.

Latency is the time of the run that held the request, by size of batch (a batch of
8 rows costs less per row than 8 runs of 1, so only runs of the same size are
compared), and its lower quartile on each side: the trial runs copies on a thread
of lower priority so that clients never wait for it, and the time a run waits for
the CPU is not what it costs; the lower quartile is the run undisturbed. (A
thread's CPU time would be cleaner, but onnxruntime's own threads and its spinning
caller make it say little.)"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence

import numpy as np

from mlapi.repository.config import RolloutConfig

MAX_CHANGES = 64  # distinct (output, served, trial) label pairs counted; then others
COST_SAMPLES = 256  # runs remembered per side and batch size: a sliding window
MIN_COST_SAMPLES = 5  # runs of one size on each side before that size is compared
ERROR_OUTPUT = "error"  # the output under which a trial's failed run is counted


def _discrete(array: np.ndarray) -> bool:
    return array.dtype.kind in "OSUbiu"


def disagreement(served: np.ndarray, trial: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Per row, whether ``trial`` differs from ``served``; None when they cannot be
    compared row by row (another shape or another kind of value): all differ."""
    if served.shape != trial.shape or _discrete(served) != _discrete(trial):
        return None
    if _discrete(served):
        differs = served != trial
    else:
        a, b = served.astype(np.float64), trial.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            close = np.abs(a - b) <= tolerance * np.maximum(1.0, np.abs(a))
        differs = ~(close | (a == b) | (np.isnan(a) & np.isnan(b)))
    if differs.ndim == 0:
        return np.asarray([bool(differs)])
    if not differs.shape[0]:
        return np.asarray(differs, dtype=bool)
    return np.asarray(differs.reshape(differs.shape[0], -1).any(axis=1))


class Comparison:
    """A shadow's running tally: requests compared and agreeing, disagreements per
    output, the label changes seen, the largest numeric difference, the costs."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.compared = 0
        self.agreed = 0
        self.dropped = 0
        self.by_output: Counter[str] = Counter()
        self.changes: Counter[tuple[str, str, str]] = Counter()
        self.largest: dict[str, float] = {}  # numeric output -> largest difference seen
        self.first_disagreeing: str | None = None
        self._costs: dict[str, dict[int, deque[float]]] = {"served": {}, "trial": {}}
        # the shadow's thread adds, the serving thread adds costs, the event loop reads
        self.lock = threading.Lock()

    # ----- what a copy's run gives ----------------------------------------------
    def add(
        self,
        request_id: str | None,
        served: Mapping[str, np.ndarray],
        trial: Mapping[str, np.ndarray],
    ) -> list[str]:
        """Compare one request's answers; the outputs that disagree."""
        first = next(iter(served.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1
        return self.add_batch([request_id], [served], trial, [max(rows, 1)])[0]

    def add_batch(
        self,
        ids: Sequence[str | None],
        served: Sequence[Mapping[str, np.ndarray]],
        trial: Mapping[str, np.ndarray],
        sizes: Sequence[int],
    ) -> list[list[str]]:
        """Compare the answers of a batch of requests (``sizes`` rows each, stacked in
        ``trial``, each request's own in ``served``): per request, the outputs that
        disagree. Each output is compared for the whole batch at once."""
        differing: list[list[str]] = [[] for _ in served]
        starts = np.cumsum([0, *sizes])
        for name in served[0]:
            other = trial.get(name)
            parts = [answer[name] for answer in served]
            stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)
            rows = None if other is None else disagreement(stacked, other, self.tolerance)
            if rows is None:
                for names in differing:
                    names.append(name)
                continue
            if not rows.any():
                continue
            if len(parts) == 1:
                per_request = np.asarray([True])
            else:
                per_request = np.logical_or.reduceat(rows, starts[:-1])
            assert other is not None
            for index in np.flatnonzero(per_request):
                differing[index].append(name)
                low, high = starts[index], starts[index + 1]
                with self.lock:
                    self._note(name, stacked[low:high], other[low:high], rows[low:high])
        with self.lock:
            self.compared += len(served)
            for request_id, names in zip(ids, differing, strict=True):
                if not names:
                    self.agreed += 1
                    continue
                self.by_output.update(names)
                if self.first_disagreeing is None:
                    self.first_disagreeing = request_id or "(one without X-Request-Id)"
        return differing

    def failed(self, request_id: str) -> None:
        """The trial could not answer a copy: it disagrees."""
        with self.lock:
            self._failed(request_id)

    def _failed(self, request_id: str) -> None:
        self.compared += 1
        self.by_output[ERROR_OUTPUT] += 1
        if self.first_disagreeing is None:
            self.first_disagreeing = request_id

    def _note(self, name: str, served: np.ndarray, trial: np.ndarray, rows: np.ndarray) -> None:
        if _discrete(served) and served.ndim in (1, 2) and served.size == served.shape[0]:
            old_labels = served.reshape(-1)[rows]
            new_labels = trial.reshape(-1)[rows]
            for old, new in zip(old_labels, new_labels, strict=True):
                key = (name, _text(old), _text(new))
                if key in self.changes or len(self.changes) < MAX_CHANGES:
                    self.changes[key] += 1
        elif not _discrete(served):
            with np.errstate(invalid="ignore", over="ignore"):
                gap = np.abs(served.astype(np.float64) - trial.astype(np.float64))
            finite = gap[np.isfinite(gap)]
            largest = float(finite.max()) if finite.size else float("inf")
            self.largest[name] = max(self.largest.get(name, 0.0), largest)

    def cost(self, side: str, rows: int, seconds: float) -> None:
        """One run's time (``side``: served or trial), kept by batch size."""
        # no lock: it runs on the serving thread, which must never wait for the shadow's
        # (a deque's append and a dict's setdefault are each atomic)
        window = self._costs[side].get(rows)
        if window is None:
            window = self._costs[side].setdefault(rows, deque(maxlen=COST_SAMPLES))
        window.append(seconds)

    # ----- what they say ---------------------------------------------------------
    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 1.0

    def latency_ratio(self) -> float | None:
        """The trial's run time over the served one's (lower quartiles), for runs of
        the same size, weighted by how many of each size both sides ran; None before
        enough runs."""
        served_costs = self._costs["served"]
        pairs = [
            (list(trial), list(served_costs.get(rows, ())))
            for rows, trial in list(self._costs["trial"].items())
        ]
        weighted = 0.0
        weights = 0
        for trial_runs, served_runs in pairs:
            weight = min(len(trial_runs), len(served_runs))
            if weight < MIN_COST_SAMPLES:
                continue
            base = _lower_quartile(served_runs)
            if base <= 0:
                continue
            weighted += weight * _lower_quartile(trial_runs) / base
            weights += weight
        return weighted / weights if weights else None

    def verdict(self, rollout: RolloutConfig, elapsed_s: float) -> tuple[str, str] | None:
        """("promoted" | "refused", why), or None while the shadow goes on: refused as
        soon as ``min_compared`` requests agree too little (what disagreed stays so);
        promoted when they agree and the latency holds; refused past ``max_shadow_s``
        when the latency still does not hold or too few requests came."""
        ratio = self.latency_ratio()
        if self.compared >= rollout.min_compared:
            if self.agreement < rollout.min_agreement:
                return "refused", self.disagreement_reason(rollout)
            if ratio is not None and ratio <= rollout.max_latency_ratio:
                return "promoted", (
                    f"agreement {self.agreement:.4f} on {self.compared:,} requests, "
                    f"latency ratio {ratio:.2f}"
                )
        if elapsed_s < rollout.max_shadow_s:
            return None
        if self.compared < rollout.min_compared:
            return "refused", (
                f"only {self.compared:,} requests compared in {rollout.max_shadow_s:g}s "
                f"(min_compared {rollout.min_compared:,}); publish it again to retry"
            )
        shown = "not measured" if ratio is None else f"{ratio:.2f}"
        return "refused", (
            f"latency ratio {shown} > {rollout.max_latency_ratio:g} after "
            f"{rollout.max_shadow_s:g}s (agreement {self.agreement:.4f} on "
            f"{self.compared:,} requests)"
        )

    def disagreement_reason(self, rollout: RolloutConfig) -> str:
        parts = [
            f"agreement {self.agreement:.2f} < {rollout.min_agreement:g} on "
            f"{self.compared:,} requests",
            f"first disagreeing request id {self.first_disagreeing}",
        ]
        for (output, old, new), times in self.changes.most_common(3):
            parts.append(f"{output} {old!r} -> {new!r} {times:,} times")
        for output, largest in sorted(self.largest.items()):
            parts.append(
                f"{output} differs by up to {largest:.3g} (tolerance {self.tolerance:g}) "
                f"in {self.by_output[output]:,} requests"
            )
        if self.by_output[ERROR_OUTPUT]:
            parts.append(f"the new version failed {self.by_output[ERROR_OUTPUT]:,} requests")
        return "; ".join(parts)

    def summary(self) -> dict[str, object]:
        """The live comparison, for the repository index."""
        ratio = self.latency_ratio()
        with self.lock:
            return {
                "compared": self.compared,
                "agreement": round(self.agreement, 4),
                "latency_ratio": None if ratio is None else round(ratio, 3),
                "dropped": self.dropped,
                "disagreements": dict(self.by_output),
            }


def _lower_quartile(values: list[float]) -> float:
    return sorted(values)[len(values) // 4]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return str(value)
