"""What an import must show before it is written: the converted model, served by
ml-api's own runtime, answers as the original does on the sample rows or texts.
Each check raises ConfigError naming how far apart they are, or gives the measure
that the import reports.

Tabular: the same labels (where two classes tie exactly, either may be named) and
probabilities within ``TOLERANCE``; a regressor's predictions within ``TOLERANCE``
relative to their size (absolute below 1). Text: an encoder's embeddings at cosine
``MIN_COSINE`` or more each; a classifier's top class the same and its scores within
``SCORE_TOLERANCE``. An int8 quantization, to the looser ``INT8_MIN_COSINE`` and
``INT8_SCORE_TOLERANCE``: its weights are rounded to 256 steps by design."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlapi.errors import ConfigError

TOLERANCE = 1e-5
MIN_COSINE = 0.999
SCORE_TOLERANCE = 1e-4
# int8 bounds. all-MiniLM-L6-v2 quantized (its residual projections kept fp32) gives
# 0.995 or more on the import samples but the one-character "?" (0.975 in a padded
# pass, 0.987 alone: dynamic quantization scales a whole pass's activations at once,
# so a row's answer moves with its pass-mates by ~0.01); every MatMul int8, 0.964.
INT8_MIN_COSINE = 0.97
INT8_SCORE_TOLERANCE = 0.02


def compare_tabular(
    model: Any, rows: np.ndarray, served: dict[str, np.ndarray]
) -> tuple[float, int]:
    """(the largest difference, the rows whose labels differ on an exact tie)."""
    expected = np.asarray(model.predict(rows))
    if "label" not in served:  # a regressor
        values = next(iter(served.values())).reshape(expected.shape)
        scale = np.maximum(np.abs(expected), 1.0)
        return _within(float((np.abs(values - expected) / scale).max())), 0
    got = np.asarray(served["label"]).ravel()
    if got.shape[0] != expected.shape[0]:
        raise ConfigError(
            f"the converted model gives {got.shape[0]} labels for {expected.shape[0]} rows"
        )
    same = _text(got) == _text(expected)
    scored = "probabilities" in served and hasattr(model, "predict_proba")
    original = model.predict_proba(rows) if scored else None
    if not same.all():
        # where two classes tie exactly, which one a model names is arbitrary
        top = np.sort(original)[:, -2:] if original is not None else None  # the best two
        tied = top is not None and bool((top[~same, 1] - top[~same, 0] <= TOLERANCE).all())
        if not tied:
            raise ConfigError(
                f"the converted model gives other labels on {int((~same).sum())} of "
                f"{len(rows)} rows"
            )
    if original is None:
        return 0.0, 0
    return _within(float(np.abs(served["probabilities"] - original).max())), int((~same).sum())


def _within(difference: float) -> float:
    if difference > TOLERANCE:
        raise ConfigError(
            f"the converted model differs from the original by {difference:.2e} "
            f"(tolerance {TOLERANCE:g})"
        )
    return difference


def _text(values: np.ndarray) -> np.ndarray:
    return np.array([str(plain(value)) for value in values])


def plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def compare_scores(served: np.ndarray, expected: np.ndarray, int8: bool = False) -> float:
    """A text classifier or reranker: the largest score difference."""
    worst = float(np.abs(served - expected).max())
    same = bool((served.argmax(axis=1) == expected.argmax(axis=1)).all())
    bound = INT8_SCORE_TOLERANCE if int8 else SCORE_TOLERANCE
    if not same or worst > bound:
        what = "int8 model" if int8 else "exported model"
        raise ConfigError(
            f"the {what} differs from the original: scores by {worst:.2e} (bound {bound:g})"
            + ("" if same else ", top classes differ")
        )
    return worst


def compare_embeddings(served: np.ndarray, expected: np.ndarray, int8: bool = False) -> float:
    """A text encoder: the lowest cosine between a served and an original embedding."""
    cosine = (served * expected).sum(axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    worst = float(cosine.min())
    bound = INT8_MIN_COSINE if int8 else MIN_COSINE
    if worst < bound:
        what = "int8 encoder" if int8 else "exported encoder"
        raise ConfigError(
            f"the {what} differs from the original: lowest cosine {worst:.5f} (bound {bound})"
        )
    return worst
