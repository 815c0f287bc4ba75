"""The checks an import passes before it is written (importers/checks.py), alone:
issue 22's review turned off the probability tolerance, the text import's cosine
gate and the label-mismatch refusal, and no test failed. Here the served answers
are made to differ from the original's by a chosen amount."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlapi.errors import ConfigError
from mlapi.importers import checks

ROWS = np.zeros((4, 2))


class Classifier:
    """An original model: fixed labels and probabilities for the sample's 4 rows."""

    def __init__(self, labels: list[Any], probabilities: list[list[float]] | None) -> None:
        self.labels = np.array(labels)
        if probabilities is not None:
            scores = np.array(probabilities)
            self.predict_proba = lambda rows: scores[: rows.shape[0]]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.labels[: rows.shape[0]]  # the rows it is given, one label each


class Regressor:
    def __init__(self, values: list[float]) -> None:
        self.values = np.array(values)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.values[: rows.shape[0]]


PROBABILITIES = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]]  # row 2 is an exact tie
LABELS = ["a", "b", "a", "a"]


def _served(labels: list[Any], shift: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "label": np.array(labels, dtype=object),
        "probabilities": np.array(PROBABILITIES) + shift,
    }


def test_the_same_labels_and_probabilities_pass_with_the_difference_measured() -> None:
    original = Classifier(LABELS, PROBABILITIES)
    assert checks.compare_tabular(original, ROWS, _served(LABELS)) == (0.0, 0)
    largest, ties = checks.compare_tabular(original, ROWS, _served(LABELS, 4e-6))
    assert largest == pytest.approx(4e-6) and ties == 0


def test_probabilities_past_the_tolerance_are_refused() -> None:
    original = Classifier(LABELS, PROBABILITIES)
    with pytest.raises(ConfigError) as refused:
        checks.compare_tabular(original, ROWS, _served(LABELS, 2e-5))
    assert refused.value.args[0] == (
        "the converted model differs from the original by 2.00e-05 (tolerance 1e-05)"
    )


def test_other_labels_are_refused_unless_the_row_is_an_exact_tie() -> None:
    original = Classifier(LABELS, PROBABILITIES)
    assert checks.compare_tabular(original, ROWS, _served(["a", "b", "b", "a"])) == (0.0, 1)
    with pytest.raises(ConfigError) as refused:
        checks.compare_tabular(original, ROWS, _served(["b", "b", "b", "a"]))
    assert refused.value.args[0] == "the converted model gives other labels on 2 of 4 rows"
    near_tie = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5 - 2e-5], [0.7, 0.3]]
    with pytest.raises(ConfigError, match="other labels on 1 of 4 rows"):
        checks.compare_tabular(Classifier(LABELS, near_tie), ROWS, _served(["a", "b", "b", "a"]))
    # three classes: a tie is between the best two, whatever the third one's score
    three = [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.0, 0.5, 0.5], [0.7, 0.2, 0.1]]
    served = {"label": np.array(["a", "b", "b", "a"]), "probabilities": np.array(three)}
    assert checks.compare_tabular(Classifier(LABELS, three), ROWS, served) == (0.0, 1)
    unequal = [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.7, 0.2, 0.1]]
    served = {"label": np.array(["a", "b", "b", "a"]), "probabilities": np.array(unequal)}
    with pytest.raises(ConfigError, match="other labels on 1 of 4 rows"):
        checks.compare_tabular(Classifier(LABELS, unequal), ROWS, served)


def test_a_tie_and_a_difference_of_exactly_the_tolerance_pass() -> None:
    edge = [[1.0, 0.0], [0.0, 1.0], [0.0, 1e-5], [1.0, 0.0]]  # row 2: 1e-5 apart, a tie
    original = Classifier(["a", "b", "b", "a"], edge)
    served = {"label": np.array(["a", "b", "a", "a"]), "probabilities": np.array(edge)}
    assert checks.compare_tabular(original, ROWS, served) == (0.0, 1)
    moved = np.array(edge)
    moved[0, 1] = 1e-5  # 0.0 -> 1e-5: exactly the tolerance
    served = {"label": np.array(["a", "b", "b", "a"]), "probabilities": moved}
    assert checks.compare_tabular(original, ROWS, served) == (1e-5, 0)


def test_a_converted_model_that_answers_another_number_of_rows_is_refused() -> None:
    original = Classifier(LABELS, PROBABILITIES)
    with pytest.raises(ConfigError) as refused:
        checks.compare_tabular(original, ROWS, _served(LABELS[:3]))
    assert refused.value.args[0] == "the converted model gives 3 labels for 4 rows"


def test_a_classifier_without_probabilities_is_held_to_its_labels() -> None:
    original = Classifier([1, 0, 1, 1], None)
    served = {"label": np.array([b"1", b"0", b"1", b"1"], dtype=object)}
    assert checks.compare_tabular(original, ROWS, served) == (0.0, 0)
    with pytest.raises(ConfigError, match="other labels on 1 of 4 rows"):
        checks.compare_tabular(original, ROWS, {"label": np.array([1, 0, 0, 1])})
    probabilities_only_served = {**served, "probabilities": np.zeros((4, 2))}
    assert checks.compare_tabular(original, ROWS, probabilities_only_served) == (0.0, 0)


def test_a_regressor_is_held_relative_to_its_values_and_absolute_below_one() -> None:
    original = Regressor([1000.0, 0.5, -2.0, 0.0])
    close = {"y": np.array([[1000.009], [0.500009], [-2.000019], [9e-6]])}
    largest, ties = checks.compare_tabular(original, ROWS, close)
    assert largest == pytest.approx(9.5e-6, rel=0.01) and ties == 0
    for far in ([1000.02, 0.5, -2.0, 0.0], [1000.0, 0.50002, -2.0, 0.0], [1000, 0.5, -2, 2e-5]):
        with pytest.raises(ConfigError, match="differs from the original by"):
            checks.compare_tabular(original, ROWS, {"y": np.array(far)})


def test_plain_values_compare_as_text() -> None:
    assert checks.plain(b"setosa") == "setosa"
    assert checks.plain(np.int64(3)) == 3 and type(checks.plain(np.int64(3))) is int
    assert checks.plain("x") == "x"


def _unit(rows: list[list[float]]) -> np.ndarray:
    array = np.array(rows, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_an_encoder_is_held_to_the_cosine_of_its_worst_sentence() -> None:
    expected = _unit([[1, 0, 0], [0, 1, 0]])
    assert checks.compare_embeddings(expected * 3, expected) == pytest.approx(1.0)
    assert checks.compare_embeddings(expected, expected * 0.5) == pytest.approx(1.0)
    at_edge = np.array([[0.999, np.sqrt(1 - 0.999**2)], [1.0, 0.0]])
    exactly = checks.compare_embeddings(at_edge, np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert exactly == checks.MIN_COSINE  # the gate's own value passes
    slightly = _unit([[1, 0.03, 0], [0, 1, 0]])  # cosine 0.99955
    assert checks.compare_embeddings(slightly, expected) == pytest.approx(0.99955, abs=1e-5)
    off = _unit([[1, 0.05, 0], [0, 1, 0]])  # cosine 0.99875
    with pytest.raises(ConfigError) as refused:
        checks.compare_embeddings(off, expected)
    assert refused.value.args[0] == (
        "the exported encoder differs from the original: lowest cosine 0.99875 (bound 0.999)"
    )
    # an int8 encoder is held to its own, looser bound, and says which failed
    assert checks.compare_embeddings(off, expected, int8=True) == pytest.approx(0.99875, abs=1e-5)
    far = _unit([[1, 0.26, 0], [0, 1, 0]])  # cosine 0.96782
    with pytest.raises(ConfigError) as refused:
        checks.compare_embeddings(far, expected, int8=True)
    assert refused.value.args[0] == (
        "the int8 encoder differs from the original: lowest cosine 0.96782 (bound 0.97)"
    )


def test_a_text_classifier_is_held_to_its_top_class_and_its_scores() -> None:
    expected = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert checks.compare_scores(expected + 5e-5, expected) == pytest.approx(5e-5)
    edge = np.array([[1.0, 0.0]])
    assert checks.compare_scores(np.array([[1.0, 1e-4]]), edge) == checks.SCORE_TOLERANCE
    with pytest.raises(ConfigError) as refused:
        checks.compare_scores(expected + 2e-4, expected)
    assert refused.value.args[0] == (
        "the exported model differs from the original: scores by 2.00e-04 (bound 0.0001)"
    )
    assert checks.compare_scores(expected + 0.019, expected, int8=True) == pytest.approx(0.019)
    with pytest.raises(ConfigError, match=r"int8 model .* scores by 2\.10e-02 \(bound 0\.02\)"):
        checks.compare_scores(expected + 0.021, expected, int8=True)
    swapped = np.array([[0.7, 0.3], [0.6, 0.4]])
    with pytest.raises(ConfigError, match=r"scores by 2\.00e-01"):
        checks.compare_scores(swapped, expected)
    tiny_swap = np.array([[0.7, 0.3], [0.50001, 0.49999]])
    near = np.array([[0.7, 0.3], [0.49999, 0.50001]])
    with pytest.raises(ConfigError, match="top classes differ"):  # within the tolerance
        checks.compare_scores(tiny_swap, near)
