"""How a text batch is cut into encoder passes (runtimes/text.py ``passes``): sorted
rows, a pass grows while it stays within the token budget and, past MIN_PASS_ROWS
rows, within max_padding x its real tokens."""

from __future__ import annotations

import random

import pytest

from mlapi.runtimes.text import MIN_PASS_ROWS, passes


def _check(lengths: list[int], budget: int, bound: float) -> list[tuple[int, int]]:
    found = passes(lengths, budget, bound)
    assert [s for s, _ in found] == [0] + [e for _, e in found[:-1]]  # in order, no gap
    assert found[-1][1] == len(lengths)
    for start, end in found:
        rows, longest, real = end - start, lengths[end - 1], sum(lengths[start:end])
        assert rows == 1 or rows * longest <= budget
        if rows > MIN_PASS_ROWS:
            assert rows * longest <= bound * real
    return found


def test_rows_of_one_length_are_one_pass() -> None:
    assert passes([12] * 64, 16384, 1.2) == [(0, 64)]


@pytest.mark.parametrize("bound", [1.0, 1.1, 1.2, 1.5])
def test_mixed_lengths_stay_within_the_bound(bound: float) -> None:
    rng = random.Random(7)
    lengths = sorted(rng.randint(8, 60) for _ in range(64))
    found = _check(lengths, 16384, bound)
    padded = sum((e - s) * lengths[e - 1] for s, e in found)
    one_pass = len(lengths) * lengths[-1]
    assert padded < one_pass * 0.8  # what the cut saves against one pass
    # the pass after each cut would have gone past the bound with its next row
    for start, end in found[:-1]:
        rows, real = end + 1 - start, sum(lengths[start : end + 1])
        if end - start >= MIN_PASS_ROWS:
            assert rows * lengths[end] > bound * real


def test_a_large_bound_cuts_only_at_the_budget() -> None:
    lengths = sorted([10] * 50 + [100] * 50)
    assert passes(lengths, 16384, 100.0) == [(0, 100)]
    assert _check(lengths, 1000, 100.0) == [(0, 50)] + [(i, i + 10) for i in range(50, 100, 10)]


def test_the_first_rows_of_a_pass_are_kept_together() -> None:
    """Below MIN_PASS_ROWS the bound does not cut: tiny passes cost more than padding."""
    assert MIN_PASS_ROWS == 4
    assert passes([1, 2, 4, 8, 16, 32, 64], 16384, 1.0) == [(0, 4), (4, 7)]


def test_a_row_over_the_budget_is_a_pass_of_its_own() -> None:
    assert passes([5, 5, 300, 400], 256, 1.2) == [(0, 2), (2, 3), (3, 4)]
