"""Drift's numbers (issue 26): the PSI on fixed data worked by hand, the KS statistic
and p-value against scipy's, the windowed monitor, and `mlapi drift` on a logs
folder: the features that moved first, exit 1 past the threshold."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import stats

from mlapi import drift_cli
from mlapi.errors import ConfigError
from mlapi.serving.drift import Feature, Monitor, psi


def test_psi_worked_by_hand() -> None:
    # shares .5/.5 against .8/.2: .3 ln(1.6) + (-.3) ln(0.4)
    expected = 0.3 * math.log(1.6) - 0.3 * math.log(0.4)
    assert psi(np.array([50, 50]), np.array([80, 20])) == pytest.approx(expected, rel=1e-9)
    assert psi(np.array([1, 1, 1]), np.array([5, 5, 5])) == 0.0
    # an empty bin counts as rare (1e-4), not infinite
    assert psi(np.array([100, 0]), np.array([50, 50])) == pytest.approx(
        (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    )


@pytest.mark.parametrize(("n", "m", "shift"), [(120, 100, 0.0), (500, 800, 0.2), (2000, 900, 0.05)])
def test_ks_equals_scipy(n: int, m: int, shift: float) -> None:
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=m) + shift
    statistic, p_value = drift_cli.ks_2samp(a, b)
    expected = stats.ks_2samp(a, b)
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=0.06)


def test_bins_are_the_references_deciles_and_categories_its_commonest_values() -> None:
    feature = Feature("x", np.arange(1000, dtype=np.float64))
    assert feature.size == 10 and feature.reference.tolist() == [100] * 10
    labels = Feature("label", np.array(["a"] * 5 + ["b"] * 3 + ["c"], object))
    assert labels.count(np.array(["b", "zz", "a"], object)).tolist()[-1] == 1  # other


def test_the_window_forgets_its_oldest_slice() -> None:
    rng = np.random.default_rng(0)
    monitor = Monitor({"x": rng.normal(size=(1000, 1))}, None, 32, window=100)
    for _ in range(100):
        monitor.add({"x": rng.normal(size=(1, 1)) + 3}, None)
    assert monitor.psi()["x[0]"] > 1
    for _ in range(100):  # a whole window of the reference's distribution again
        monitor.add({"x": rng.normal(size=(1, 1))}, None)
    assert monitor.psi()["x[0]"] < 0.3


def test_a_batch_of_requests_counts_as_each_of_them_would() -> None:
    """The writer counts what gathered at once: the same counts, the same window
    (a batch that crosses a slice's end is cut there), a request of another shape
    left out of that feature only."""
    rng = np.random.default_rng(1)
    reference = {"x": rng.normal(size=(500, 2)), "t": np.array(["a", "b"] * 250, object)}
    requests = [
        {"x": rng.normal(size=(int(rng.integers(1, 4)), 2)) + 1, "t": np.array(["a"], object)}
        for _ in range(57)
    ]
    requests[9] = {"x": rng.normal(size=(2, 3)), "t": np.array(["c", "c"], object)}
    outputs = [{"y": r["x"][:, :1] * 2} for r in requests]
    one, batched = (
        Monitor(reference, {"y": reference["x"][:, :1]}, 32, window=40) for _ in range(2)
    )
    for request, output in zip(requests, outputs, strict=True):
        one.add(request, output)
    batched.add_requests(requests[:30], outputs[:30])  # crosses a slice (4 requests)
    batched.add_requests(requests[30:], outputs[30:])
    assert one.psi() == batched.psi() and set(one.psi()) == {"x[0]", "x[1]", "t", "output:y[0]"}
    assert [c.tolist() for c in one._current] == [c.tolist() for c in batched._current]
    assert one._requests == batched._requests == 57 % 4


def _logs(tmp_path: Path, shift: float) -> Path:
    rng = np.random.default_rng(3)
    logs = tmp_path / "logs"
    (logs / "payloads" / "m").mkdir(parents=True)
    (logs / "drift").mkdir()
    reference = rng.normal(size=(800, 2))
    np.savez(logs / "drift" / "m-v1.reference.npz", x=reference)
    lines = []
    for _ in range(600):
        row = rng.normal(size=(1, 2))
        row[0, 1] += shift
        record = {
            "time": "2026-12-06T08:00:00.000Z",
            "model": "m",
            "version": 1,
            "status": 200,
            "inputs": {"x": {"shape": [1, 2], "data": row.ravel().tolist()}},
        }
        lines.append(orjson.dumps(record))
    lines.append(b'{"cut by a full disk')
    (logs / "payloads" / "m" / "20261206T080000.000000Z-1.jsonl").write_bytes(b"\n".join(lines))
    return logs


def _run(logs: Path, capsys: pytest.CaptureFixture[str], **extra: object) -> tuple[int, str]:
    args = argparse.Namespace(
        model="m",
        logs=str(logs),
        model_path=None,
        version=None,
        since=None,
        threshold=0.2,
        max_features=32,
        format="json",
    )
    for key, value in extra.items():
        setattr(args, key, value)
    code = drift_cli.main(args)
    return code, capsys.readouterr().out


def test_the_report_puts_the_moved_feature_first_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(_logs(tmp_path, shift=2.0), capsys)
    report = json.loads(out)
    assert code == 1 and report["drifted"] == ["x[1]"] and report["requests"] == 600
    first, second = report["features"]
    assert first["feature"] == "x[1]" and first["psi"] > 0.2 and second["psi"] < 0.1
    assert first["mean_shift_sd"] == pytest.approx(2.0, abs=0.2)
    assert first["ks_p"] < 1e-6 and second["ks_p"] > 0.01
    code, out = _run(tmp_path / "logs", capsys, format="text")
    assert code == 1 and out.splitlines()[0].endswith("PSI over 0.2: x[1]")


def test_the_report_exits_0_when_nothing_moved_and_2_without_a_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = _logs(tmp_path, shift=0.0)
    code, out = _run(logs, capsys)
    assert code == 0 and json.loads(out)["drifted"] == []
    (logs / "drift" / "m-v1.reference.npz").unlink()
    with pytest.raises(ConfigError, match="no reference for m v1"):
        _run(logs, capsys)
    with pytest.raises(ConfigError, match="no payload records"):
        _run(logs, capsys, model="other")
    with pytest.raises(ConfigError, match="--since"):
        _run(logs, capsys, since="yesterday")
