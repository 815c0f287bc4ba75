"""The rules of a gated rollout, each alone: how answers are compared, when a shadow
promotes or refuses, how a canary splits requests, how a decision is recorded and
how the scan reads it (README "Rollout strategies")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlapi.errors import ModelLoadError
from mlapi.registry.compare import Comparison, disagreement
from mlapi.repository import config, rollback, scan

F = np.float32


@pytest.mark.parametrize(
    ("served", "trial", "rows"),
    [
        (np.array([0.5, 1000.0], F), np.array([0.50009, 1000.09], F), [False, False]),
        (np.array([0.5, 1000.0], F), np.array([0.5002, 1000.2], F), [True, True]),
        (np.array([[1.0, np.nan]], F), np.array([[1.0, np.nan]], F), [False]),
        (np.array([[1.0, np.nan]], F), np.array([[1.0, 2.0]], F), [True]),
        (np.array([1, 2], np.int64), np.array([1, 3], np.int64), [False, True]),
        (np.array(["a", "b"], object), np.array(["a", "b"], object), [False, False]),
        (np.array([[0.1, 0.9], [0.8, 0.2]], F), np.array([[0.1, 0.9], [0.2, 0.8]], F), [0, 1]),
    ],
)
def test_rows_agree_within_tolerance_relative_above_one(
    served: np.ndarray, trial: np.ndarray, rows: list[bool]
) -> None:
    found = disagreement(served, trial, 1e-4)
    assert found is not None and found.tolist() == [bool(r) for r in rows]


@pytest.mark.parametrize(
    "trial",
    [np.array([1.0, 2.0, 3.0], F), np.array(["1", "2"], object), np.array([[1.0, 2.0]], F)],
)
def test_another_shape_or_kind_cannot_agree(trial: np.ndarray) -> None:
    assert disagreement(np.array([1.0, 2.0], F), trial, 1.0) is None


def _rollout(**values: object) -> config.RolloutConfig:
    return config.parse({"rollout": {"strategy": "shadow", **values}}).rollout


def _compare(pairs: list[tuple[str, str]]) -> Comparison:
    comparison = Comparison(1e-4)
    for n, (old, new) in enumerate(pairs):
        comparison.add(
            f"r{n}", {"label": np.array([old], object)}, {"label": np.array([new], object)}
        )
    return comparison


def _costs(comparison: Comparison, served: float, trial: float, runs: int = 10) -> None:
    for _ in range(runs):
        comparison.cost("served", 1, served)
        comparison.cost("trial", 1, trial)


def test_a_swapped_label_map_is_refused_at_min_compared_with_its_numbers() -> None:
    comparison = _compare([("setosa", "virginica")] * 8 + [("versicolor", "versicolor")] * 2)
    _costs(comparison, 1.0, 1.0)
    rollout = _rollout(min_compared=10, min_agreement=0.99)
    decision, why = comparison.verdict(rollout, elapsed_s=0.0) or ("", "")
    assert decision == "refused"
    assert why.startswith("agreement 0.20 < 0.99 on 10 requests; first disagreeing request id r0")
    assert "label 'setosa' -> 'virginica' 8 times" in why
    assert comparison.verdict(_rollout(min_compared=11), elapsed_s=0.0) is None


def test_agreement_at_the_bound_with_latency_within_is_promoted() -> None:
    comparison = _compare([("a", "a")] * 99 + [("a", "b")])
    _costs(comparison, 1.0, 1.5)
    decision, why = comparison.verdict(_rollout(min_compared=100), elapsed_s=0.0) or ("", "")
    assert decision == "promoted" and "agreement 0.9900 on 100 requests" in why
    assert comparison.verdict(_rollout(min_compared=100, min_agreement=0.995), 0.0) == (
        "refused",
        comparison.disagreement_reason(_rollout(min_agreement=0.995)),
    )


def test_a_slow_version_waits_for_max_shadow_s_then_is_refused_on_latency() -> None:
    comparison = _compare([("a", "a")] * 20)
    _costs(comparison, 1.0, 3.0)
    rollout = _rollout(min_compared=20, max_latency_ratio=1.5, max_shadow_s=60)
    assert comparison.verdict(rollout, elapsed_s=59.9) is None
    decision, why = comparison.verdict(rollout, elapsed_s=60.0) or ("", "")
    assert decision == "refused" and why.startswith("latency ratio 3.00 > 1.5 after 60s")


def test_too_few_requests_by_max_shadow_s_is_refused() -> None:
    comparison = _compare([("a", "a")] * 5)
    decision, why = comparison.verdict(_rollout(min_compared=6, max_shadow_s=1), 1.0) or ("", "")
    assert decision == "refused" and why.startswith("only 5 requests compared in 1s")


def test_latency_compares_runs_of_the_same_size_by_their_lower_quartile() -> None:
    comparison = Comparison(1e-4)
    for seconds in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 50.0]:  # a run that waited for the CPU
        comparison.cost("trial", 1, seconds * 2)
        comparison.cost("served", 1, seconds)
    for _ in range(10):  # batches of 8 the trial never ran: not compared
        comparison.cost("served", 8, 0.1)
    assert comparison.latency_ratio() == pytest.approx(2.0)
    assert Comparison(1e-4).latency_ratio() is None


def test_a_failed_trial_run_counts_as_a_disagreement() -> None:
    comparison = _compare([("a", "a")])
    comparison.failed("r9")
    assert comparison.agreement == 0.5 and comparison.by_output["error"] == 1
    assert "the new version failed 1 requests" in comparison.disagreement_reason(_rollout())


# ----- config -------------------------------------------------------------------------
def test_strategy_defaults_to_switch_and_takes_only_known_names() -> None:
    assert config.parse({}).rollout.strategy == "switch"
    assert not config.parse({}).rollout.gated
    assert config.parse({"rollout": {"strategy": "canary"}}).rollout.gated
    with pytest.raises(ModelLoadError, match="strategy must be one of"):
        config.parse({"rollout": {"strategy": "blue-green"}})


@pytest.mark.parametrize("steps", [[], [10, 50], [50, 10, 100], [0, 100], [10, 10, 100], ["10"]])
def test_canary_steps_must_rise_to_100(steps: list[object]) -> None:
    with pytest.raises(ModelLoadError, match="canary_percent"):
        config.parse({"rollout": {"canary_percent": steps}})


def test_canary_key_is_a_header_name() -> None:
    assert config.parse({"rollout": {"canary_key": "X-User"}}).rollout.canary_key == "x-user"
    with pytest.raises(ModelLoadError, match="canary_key"):
        config.parse({"rollout": {"canary_key": "x user"}})


# ----- the canary's split --------------------------------------------------------------
def test_a_canary_share_is_stable_by_key_and_close_to_its_percent() -> None:
    from mlapi.registry.canary import Canary

    canary = Canary.__new__(Canary)
    canary.threshold = 1000  # 10%
    keys = [f"user-{n}" for n in range(20_000)]
    picked = [canary.picks(k) for k in keys]
    assert 0.09 <= sum(picked) / len(keys) <= 0.11
    assert [canary.picks(k) for k in keys] == picked
    canary.threshold = 5000  # a later step keeps every key the earlier one picked
    assert all(canary.picks(k) for k, p in zip(keys, picked, strict=True) if p)


# ----- the decision in the repository, and the scan ----------------------------------
def _model(tmp_path: Path, versions: int, toml: str = '[rollout]\nstrategy = "shadow"\n') -> Path:
    model = tmp_path / "m"
    for number in range(1, versions + 1):
        (model / str(number)).mkdir(parents=True)
        (model / str(number) / "model.onnx").write_bytes(b"weights %d" % number)
    (model / "model.toml").write_text(toml)
    return model


def test_the_first_decision_holds_until_the_files_change(tmp_path: Path) -> None:
    model = _model(tmp_path, 2)
    assert rollback.decide(model, 2, "refused", "agreement 0.1") == ("refused", "agreement 0.1")
    assert rollback.decide(model, 2, "promoted", "fine") == ("refused", "agreement 0.1")
    assert rollback.decisions(model) == {2: ("refused", "agreement 0.1")}
    (model / "2" / "model.onnx").write_bytes(b"retrained")
    assert rollback.decisions(model) == {}
    assert rollback.decide(model, 2, "promoted", "fine") == ("promoted", "fine")


def test_the_scan_names_the_newest_version_a_trial_while_undecided(tmp_path: Path) -> None:
    model = _model(tmp_path, 3)
    entry = scan.scan_model(model)
    assert [v.version for v in entry.versions] == [2] and entry.trial is not None
    assert entry.trial.version == 3
    rollback.decide(model, 3, "refused", "agreement 0.2")
    entry = scan.scan_model(model)
    assert [v.version for v in entry.versions] == [2] and entry.trial is None
    assert entry.refused == {3: "agreement 0.2"}
    rollback.decide(model, 2, "promoted", "fine")  # (2 was never on trial: no change)
    (model / "3" / "model.onnx").write_bytes(b"retrained")
    entry = scan.scan_model(model)
    assert entry.trial is not None and entry.trial.version == 3
    rollback.decide(model, 3, "promoted", "agreement 1.0")
    entry = scan.scan_model(model)
    assert [v.version for v in entry.versions] == [3] and entry.trial is None


def test_a_first_version_or_a_switch_or_a_pin_has_no_trial(tmp_path: Path) -> None:
    assert scan.scan_model(_model(tmp_path / "a", 1)).trial is None
    assert scan.scan_model(_model(tmp_path / "b", 2, "")).trial is None
    pinned = scan.scan_model(_model(tmp_path / "c", 2), pinned_version=2)
    assert pinned.trial is None and [v.version for v in pinned.versions] == [2]
