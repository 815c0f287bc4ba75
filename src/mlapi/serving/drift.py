"""Drift of what a model is asked and answers, against a reference: per feature (each
column of a 2-D numeric tensor, up to ``max_features`` in all; a BYTES tensor's
values by their most frequent categories) a population stability index of a
sliding window of live requests against the reference, with bins cut at the
reference's quantiles. Counts only: a feature is BINS counts per slice of the
window, whatever the traffic, so memory is bounded.

    PSI = sum over bins of (live% - reference%) * ln(live% / reference%)

(both shares floored at EPSILON so that an empty bin counts as rare, not infinite).
Under 0.1 is usually read as stable, over 0.2 as a shift worth a look."""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

BINS = 10  # deciles of the reference
CATEGORIES = 10  # the most frequent values of a BYTES tensor; the rest are "other"
EPSILON = 1e-4
SLICES = 10  # the window is counted in this many slices; the oldest slice leaves whole


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """The PSI of two histograms over the same bins (counts or shares)."""
    expected = np.maximum(reference / max(reference.sum(), 1e-12), EPSILON)
    actual = np.maximum(live / max(live.sum(), 1e-12), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class Feature:
    """One column (or one BYTES tensor): its bins, cut on the reference."""

    def __init__(self, name: str, values: np.ndarray) -> None:
        self.name = name
        self.categories: dict[str, int] | None = None
        self.edges: np.ndarray | None = None
        if values.dtype.kind in "OSU":
            common = Counter(_texts(values)).most_common(CATEGORIES)
            self.categories = {value: index for index, (value, _) in enumerate(common)}
        else:
            numbers = values.astype(np.float64)
            numbers = numbers[np.isfinite(numbers)]
            cuts = np.linspace(0, 1, BINS + 1)[1:-1]
            quantiles = np.quantile(numbers, cuts) if numbers.size else np.zeros(0)
            self.edges = np.unique(np.asarray(quantiles, np.float64))
        self.reference = self.count(values)

    @property
    def size(self) -> int:
        if self.categories is not None:
            return len(self.categories) + 1
        assert self.edges is not None
        return len(self.edges) + 1

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` per bin (a BYTES value outside the categories: other)."""
        if self.categories is not None:
            other = len(self.categories)
            indexes = [self.categories.get(text, other) for text in _texts(values)]
            return np.bincount(np.asarray(indexes, np.int64), minlength=self.size)
        assert self.edges is not None
        numbers = values.astype(np.float64)
        numbers = numbers[np.isfinite(numbers)]
        return np.bincount(np.searchsorted(self.edges, numbers, side="right"), minlength=self.size)


def features_of(
    tensors: Mapping[str, np.ndarray], prefix: str, max_features: int
) -> list[tuple[str, str, int | None]]:
    """(feature name, tensor, column or None) for each feature of ``tensors``: every
    column of a 2-D numeric tensor, a 1-D or BYTES tensor whole; at most
    ``max_features``, in the tensors' order."""
    found: list[tuple[str, str, int | None]] = []
    for name, array in tensors.items():
        if array.dtype.kind not in "OSU" and array.ndim == 2:
            for column in range(array.shape[1]):
                found.append((f"{prefix}{name}[{column}]", name, column))
        elif array.ndim >= 1:
            found.append((f"{prefix}{name}", name, None))
    return found[:max_features]


class Monitor:
    """The drift of one model version: its features' reference and live window."""

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray] | None,
        max_features: int,
        window: int,
    ) -> None:
        self._columns = features_of(inputs, "", max_features)
        self._out_columns = features_of(outputs, "output:", max_features) if outputs else []
        self.features = [Feature(f, _column(inputs[t], c)) for f, t, c in self._columns]
        self.features += [Feature(f, _column(outputs[t], c)) for f, t, c in self._out_columns]  # type: ignore[index]
        self._slice_requests = max(1, window // SLICES)
        self._slices: deque[list[np.ndarray]] = deque(maxlen=SLICES)
        self._current = self._empty()
        self._requests = 0

    def _empty(self) -> list[np.ndarray]:
        return [np.zeros(f.size, np.int64) for f in self.features]

    def add(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None
    ) -> None:
        """Count one request (its rows) into the window."""
        self.add_requests([inputs], [outputs])

    def add_requests(
        self,
        inputs: Sequence[Mapping[str, np.ndarray]],
        outputs: Sequence[Mapping[str, np.ndarray] | None],
    ) -> None:
        """Count requests into the window: each tensor's rows of all of them at once
        (one pass per feature, whatever their number), a slice at a time. A request
        whose tensor does not fit a feature's shape is not counted for that feature."""
        done = 0
        while done < len(inputs):
            take = min(len(inputs) - done, self._slice_requests - self._requests)
            self._count(inputs[done : done + take], self._columns, 0)
            if self._out_columns:
                answered = [o for o in outputs[done : done + take] if o is not None]
                self._count(answered, self._out_columns, len(self._columns))
            done += take
            self._requests += take
            if self._requests >= self._slice_requests:
                self._slices.append(self._current)
                self._current, self._requests = self._empty(), 0

    def _count(
        self,
        requests: Sequence[Mapping[str, np.ndarray]],
        columns: list[tuple[str, str, int | None]],
        offset: int,
    ) -> None:
        stacked: dict[str, list[np.ndarray]] = {}
        for tensor in {t for _, t, _ in columns}:
            arrays = [r[tensor] for r in requests if tensor in r]
            try:
                stacked[tensor] = [np.concatenate(arrays)] if len(arrays) > 1 else arrays
            except ValueError:  # shapes differ: one request at a time
                stacked[tensor] = arrays
        for index, (_, tensor, column) in enumerate(columns, offset):
            feature = self.features[index]
            for array in stacked.get(tensor, ()):
                with np.errstate(all="ignore"):
                    try:
                        self._current[index] += feature.count(_column(array, column))
                    except (ValueError, IndexError, TypeError):
                        continue  # a request of another shape: not this feature's

    def psi(self) -> dict[str, float]:
        """Each feature's PSI over the window (the full slices and the current one);
        a feature with nothing counted yet is left out."""
        found: dict[str, float] = {}
        for index, feature in enumerate(self.features):
            live = self._current[index] + sum(
                (s[index] for s in self._slices), np.zeros(feature.size, np.int64)
            )
            if live.sum():
                found[feature.name] = psi(feature.reference, live)
        return found


def save_reference(
    path: Path, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> None:
    """A reference file: the inputs by name, the outputs as ``output:<name>``; text as
    fixed-width strings, so that it loads without pickle (allow_pickle=False). Written
    whole, then renamed into place."""
    arrays = {**inputs, **{f"output:{name}": value for name, value in outputs.items()}}
    plain = {
        name: value.astype(str) if value.dtype.kind in "OS" else value
        for name, value in arrays.items()
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **plain)  # type: ignore[arg-type]  # (numpy stubs: allow_pickle)
    tmp.replace(path)


def _column(array: np.ndarray, column: int | None) -> np.ndarray:
    if column is None:
        return array.reshape(-1)
    return array[:, column]


def _texts(values: np.ndarray) -> list[str]:
    return [
        v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        for v in values.reshape(-1).tolist()
    ]
