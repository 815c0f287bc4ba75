"""The rules of a gated rollout, each alone: how answers are compared, when a shadow
promotes or refuses, how a canary splits requests, how a decision is recorded and
how the scan reads it (README "Rollout strategies")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

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
    from mlapi.repository import manifest

    trial = entry.trial
    assert (trial.name, trial.path, trial.error) == ("m", model / "3", None)
    assert trial.fingerprint == manifest.fingerprint(model / "3") != ""
    assert trial.config is not None and trial.config.rollout.strategy == "shadow"
    assert [(v.name, v.path) for v in entry.versions] == [("m", model / "2")]
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
    rollback.mark(model, 3, "rolled back: 9 of 20 requests failed")
    entry = scan.scan_model(model)  # rolled back after its promotion: 2 serves, no trial
    assert [v.version for v in entry.versions] == [2] and entry.trial is None
    assert entry.rolled_back == {3: "rolled back: 9 of 20 requests failed"}


def test_a_first_version_or_a_switch_or_a_pin_has_no_trial(tmp_path: Path) -> None:
    assert scan.scan_model(_model(tmp_path / "a", 1)).trial is None
    assert scan.scan_model(_model(tmp_path / "b", 2, "")).trial is None
    pinned = scan.scan_model(_model(tmp_path / "c", 2), pinned_version=2)
    assert pinned.trial is None and [v.version for v in pinned.versions] == [2]


# ----- the tally, request by request and in batches -----------------------------------
def test_a_batch_is_compared_per_request_whatever_its_rows() -> None:
    comparison = Comparison(1e-4)
    served = [
        {"label": np.array(["a", "b"], object), "p": np.array([[0.1], [0.2]], F)},
        {"label": np.array(["c"], object), "p": np.array([[0.3]], F)},
        {"label": np.array(["d", "e", "f"], object), "p": np.array([[0.4], [0.5], [0.6]], F)},
    ]
    trial = {
        "label": np.array(["a", "x", "c", "d", "e", "f"], object),  # the 2nd row of the 1st
        "p": np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.9]], F),  # the last of the 3rd
    }
    differing = comparison.add_batch(["r1", None, "r3"], served, trial, [2, 1, 3])
    assert differing == [["label"], [], ["p"]]
    assert (comparison.compared, comparison.agreed) == (3, 1)
    assert comparison.first_disagreeing == "r1"
    assert comparison.changes == Counter({("label", "b", "x"): 1})
    assert comparison.largest == {"p": pytest.approx(0.3)}
    assert comparison.by_output == Counter({"label": 1, "p": 1})
    reason = comparison.disagreement_reason(_rollout())
    assert "label 'b' -> 'x' 1 times" in reason
    assert "p differs by up to 0.3 (tolerance 0.0001) in 1 requests" in reason
    summary = comparison.summary()
    assert summary == {
        "compared": 3,
        "agreement": 0.3333,
        "latency_ratio": None,
        "dropped": 0,
        "disagreements": {"label": 1, "p": 1},
    }


def test_an_output_the_trial_lacks_or_shapes_otherwise_disagrees_for_every_request() -> None:
    comparison = Comparison(1e-4)
    served: list[dict[str, np.ndarray]] = [
        {"y": np.array([1.0], F), "z": np.array([1], np.int64)}
    ] * 2
    differing = comparison.add_batch(["a", "b"], served, {"y": np.ones((2, 2), F)}, [1, 1])
    assert differing == [["y", "z"], ["y", "z"]]
    assert comparison.first_disagreeing == "a" and comparison.agreement == 0.0


def test_a_request_without_an_id_is_named_so_in_the_reason() -> None:
    comparison = Comparison(1e-4)
    comparison.add(None, {"y": np.array([1], np.int64)}, {"y": np.array([2], np.int64)})
    assert comparison.first_disagreeing == "(one without X-Request-Id)"
    assert comparison.changes == Counter({("y", "1", "2"): 1})


def test_labels_in_a_column_and_as_bytes_are_counted_as_changes() -> None:
    comparison = Comparison(1e-4)
    served, trial = np.array([[b"cat"], [b"dog"]], object), np.array([[b"dog"], [b"dog"]], object)
    comparison.add("r", {"label": served}, {"label": trial})
    assert comparison.changes == Counter({("label", "cat", "dog"): 1})


def test_label_changes_are_counted_for_at_most_64_pairs_and_those_keep_counting() -> None:
    comparison = Comparison(1e-4)
    for n in range(70):
        comparison.add(str(n), {"l": np.array([n], np.int64)}, {"l": np.array([n + 1], np.int64)})
    comparison.add("again", {"l": np.array([0], np.int64)}, {"l": np.array([1], np.int64)})
    assert len(comparison.changes) == 64
    assert comparison.changes[("l", "0", "1")] == 2
    assert ("l", "64", "65") not in comparison.changes


def test_numbers_at_the_tolerance_agree_and_past_it_do_not() -> None:
    step = 2.0**-10
    at = disagreement(np.array([1.0, 4.0]), np.array([1.0 + step, 4.0 + 4 * step]), step)
    past = disagreement(np.array([1.0, 4.0]), np.array([1.0 + 2 * step, 4.0 + 8 * step]), step)
    assert at is not None and at.tolist() == [False, False]
    assert past is not None and past.tolist() == [True, True]
    scalar = disagreement(np.array(1.0), np.array(2.0), 1e-4)
    assert scalar is not None and scalar.tolist() == [True]
    assert disagreement(np.zeros((0, 3), F), np.zeros((0, 3), F), 1e-4).tolist() == []  # type: ignore[union-attr]


def test_an_infinite_difference_is_the_largest() -> None:
    comparison = Comparison(1e-4)
    comparison.add("r", {"y": np.array([1.0], F)}, {"y": np.array([np.inf], F)})
    assert comparison.largest == {"y": float("inf")}


def test_a_failed_run_is_the_first_disagreement_only_when_first() -> None:
    comparison = _compare([("a", "b")])
    comparison.failed("later")
    assert comparison.first_disagreeing == "r0"
    fresh = Comparison(1e-4)
    fresh.failed("first")
    assert fresh.first_disagreeing == "first" and fresh.compared == 1 and fresh.agreed == 0


def test_run_times_slide_and_only_sizes_with_enough_runs_on_both_sides_count() -> None:
    comparison = Comparison(1e-4)
    for _ in range(300):
        comparison.cost("served", 1, 1.0)
    for _ in range(256):  # the window keeps the last 256: the old 1.0s are gone
        comparison.cost("served", 1, 2.0)
    for _ in range(5):
        comparison.cost("trial", 1, 4.0)
    assert comparison.latency_ratio() == pytest.approx(2.0)
    for _ in range(4):  # size 8: too few runs on the trial's side to count
        comparison.cost("trial", 8, 100.0)
        comparison.cost("served", 8, 1.0)
    assert comparison.latency_ratio() == pytest.approx(2.0)
    comparison.cost("trial", 8, 100.0)
    comparison.cost("served", 8, 1.0)  # 5 each now: weighted 5 against 5
    assert comparison.latency_ratio() == pytest.approx((5 * 2.0 + 5 * 100.0) / 10)


def test_agreement_without_a_latency_measure_waits_then_says_so() -> None:
    comparison = _compare([("a", "a")] * 10)
    rollout = _rollout(min_compared=10, max_shadow_s=5)
    assert comparison.verdict(rollout, elapsed_s=1.0) is None
    decision, why = comparison.verdict(rollout, elapsed_s=5.0) or ("", "")
    assert decision == "refused" and why.startswith("latency ratio not measured > 1.5")


def test_the_lower_quartile_is_the_run_undisturbed() -> None:
    from mlapi.registry.compare import _lower_quartile

    assert _lower_quartile([4.0, 1.0, 3.0, 2.0]) == 2.0
    assert _lower_quartile([9.0]) == 9.0


# ----- the shadow's buffer: bounded in copies and in bytes, never waited for ----------
def _idle_shadow() -> Any:
    """A shadow whose thread is not started: what it is offered stays in its buffer."""
    from mlapi.observability.metrics import Metrics
    from mlapi.registry.shadow import Shadow
    from mlapi.registry.versions import ModelVersion
    from mlapi.tensors import Signature, TensorSpec

    class Doubling:  # the trial's runtime: what the buffer holds is the point here
        signature = Signature(
            (TensorSpec("x", "FP32", (-1, -1)),), (TensorSpec("y", "FP32", (-1, -1)),)
        )

        def predict(self, inputs: dict[str, np.ndarray], names: object) -> dict[str, np.ndarray]:
            return {"y": inputs["x"] * 2}

    trial = ModelVersion("m", 2, Path("."), config.parse({"rollout": {"strategy": "shadow"}}))
    trial.runtime = Doubling()  # type: ignore[assignment]
    assert trial.config is not None
    return Shadow(trial, trial.config.rollout, Metrics(), lambda d, r: None, None)


def test_the_shadow_buffer_drops_past_its_count_and_its_bytes() -> None:
    from mlapi.registry import shadow as module

    shadow = _idle_shadow()
    small = {"x": np.ones((1, 4), F)}
    for _ in range(module.SHADOW_QUEUE + 10):
        shadow.offer(None, small, {"y": np.ones((1, 4), F)})
    assert shadow.comparison.dropped == 10
    shadow = _idle_shadow()
    big = {"x": np.ones((1, 4 << 20), F)}  # 16 MiB in, 16 MiB out: two fit in 64 MiB
    for _ in range(5):
        shadow.offer("r", big, {"y": big["x"]})
    assert shadow.comparison.dropped == 3
    groups = shadow._groups()
    assert sum(len(g) for g in groups) == 2
    shadow.offer("r", big, {"y": big["x"]})  # room again once the thread took them
    assert shadow.comparison.dropped == 3


def test_the_shadow_compares_a_gathered_batch_in_one_run() -> None:
    shadow = _idle_shadow()
    rows = [np.full((1, 2), float(n), F) for n in range(5)]
    for n, row in enumerate(rows):  # the last one served a wrong answer
        shadow.offer(f"r{n}", {"x": row}, {"y": row * (3 if n == 4 else 2)})
    (group,) = shadow._groups()
    shadow._run(group)
    comparison = shadow.comparison
    assert (comparison.compared, comparison.agreed, comparison.first_disagreeing) == (5, 4, "r4")
    assert list(comparison._costs["trial"]) == [5]  # one run of 5 rows
