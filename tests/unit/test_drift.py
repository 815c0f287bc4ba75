"""Drift's numbers (issue 26): the PSI on fixed data worked by hand, the KS statistic
and p-value against scipy's, the windowed monitor, and `mlapi drift` on a logs
folder: the features that moved first, exit 1 past the threshold."""

from __future__ import annotations

import argparse
import calendar
import json
import math
import time
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


def test_features_are_bounded_and_text_is_one_feature() -> None:
    """max_features columns at most (inputs first); a 2-D BYTES tensor is one feature
    whole; a text feature keeps its ten commonest values and an "other" bin."""
    rng = np.random.default_rng(2)
    texts = np.array([[f"w{i % 15}"] for i in range(300)], object)
    monitor = Monitor(
        {"x": rng.normal(size=(300, 4)), "t": texts}, {"y": rng.normal(size=(300, 3))}, 3, 100
    )
    assert [f.name for f in monitor.features] == [
        "x[0]",
        "x[1]",
        "x[2]",
        "output:y[0]",
        "output:y[1]",
        "output:y[2]",
    ]
    monitor = Monitor({"t": texts}, None, 32, 100)
    (text,) = monitor.features
    assert text.name == "t" and text.size == 11


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


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - seconds_ago))


def test_the_report_reads_only_what_it_should(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The newest version unless --version; --since as a duration or a UTC time;
    refused requests, cut and redacted tensors left out; the repository's reference
    before the saved one; a label compared by PSI only; the text's numbers."""
    rng = np.random.default_rng(5)
    logs, repo = tmp_path / "logs", tmp_path / "models"
    (logs / "payloads" / "m").mkdir(parents=True)
    (logs / "drift").mkdir()
    (repo / "m" / "2").mkdir(parents=True)
    labels = np.array(["a", "b"] * 200)
    arrays = {"x": rng.normal(size=(400, 1)), "output:y": labels}
    np.savez(repo / "m" / "2" / "reference.npz", **arrays)  # type: ignore[arg-type]
    np.savez(logs / "drift" / "m-v2.reference.npz", x=rng.normal(size=(400, 1)) + 50)
    np.savez(logs / "drift" / "m-v1.reference.npz", x=rng.normal(size=(400, 1)))

    def record(version: int, ago: float, value: float, **extra: object) -> bytes:
        base = {
            "time": _stamp(ago),
            "model": "m",
            "version": version,
            "status": 200,
            "inputs": {"x": {"shape": [1, 1], "data": [value]}},
            "outputs": {"y": {"shape": [1], "data": ["a"]}},
        }
        return orjson.dumps({**base, **extra})

    lines = [record(2, 600, float(v) + 3) for v in rng.normal(size=300)]  # recent, moved
    lines += [record(2, 3 * 3600, float(v)) for v in rng.normal(size=200)]  # 3 h ago
    lines += [record(1, 600, float(v)) for v in rng.normal(size=100)]  # the old version
    lines += [record(2, 600, 99.0, status=503)]  # refused: not counted
    cut = {"x": {"shape": [1, 1], "data": [99.0], "truncated": True}}
    lines += [record(2, 600, 0, inputs=cut)]
    lines += [record(2, 600, 0, inputs={"x": {"shape": [1, 1], "sha256": "ab"}})]
    lines += [record(2, 600, 0, time="not a time")]  # no time: before any --since
    (logs / "payloads" / "m" / "a.jsonl").write_bytes(b"\n".join(lines))

    code, out = _run(logs, capsys, model_path=str(repo))
    report = json.loads(out)
    assert report["version"] == 2 and report["requests"] == 503
    y, x = report["features"]  # the one that moved most first
    assert (x["feature"], y["feature"]) == ("x[0]", "output:y") and "ks" not in y
    assert y["psi"] > x["psi"] > 0.2  # only "a" answered against a half-and-half reference
    code, out = _run(logs, capsys, model_path=str(repo), since="1h")
    recent = json.loads(out)
    x = next(f for f in recent["features"] if f["feature"] == "x[0]")
    assert [f["psi"] for f in recent["features"]] == sorted(
        (f["psi"] for f in recent["features"]), reverse=True
    )
    assert recent["requests"] == 302 and code == 1  # (the cut and redacted too)
    assert x["mean_shift"] == pytest.approx(3.0, abs=0.3)
    assert all(s == pytest.approx(3.0, abs=0.4) for s in x["quartile_shifts"])
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 7200))
    code, out = _run(logs, capsys, model_path=str(repo), since=since)
    assert json.loads(out)["requests"] == 302
    code, out = _run(logs, capsys, version=1)  # v1: the saved reference, unmoved
    assert code == 0 and json.loads(out)["requests"] == 100
    code, out = _run(logs, capsys, since="3d")  # no --model-path: the saved v2 (+50)
    assert json.loads(out)["features"][0]["mean_shift"] < -45  # (no output in it)
    code, out = _run(logs, capsys, model_path=str(repo), since="1h", format="text")
    head, columns, *rows = out.splitlines()
    assert head == f"m v2: 302 requests; PSI over 0.2: {', '.join(recent['drifted'])}"
    assert set(recent["drifted"]) == {"x[0]", "output:y"}
    first, second = sorted(rows)  # output:y, x[0]
    assert columns.split() == ["feature", "PSI", "KS", "KS", "p", "mean", "shift", "in", "sd"]
    numbers = second.split()
    assert numbers[0] == "x[0]" and float(numbers[1]) == x["psi"] and len(numbers) == 6
    assert float(numbers[2]) == x["ks"] and float(numbers[4]) == pytest.approx(
        x["mean_shift"], rel=1e-3
    )
    assert first.split()[0] == "output:y" and len(first.split()) == 2


def test_ks_of_samples_apart_and_alike() -> None:
    statistic, p_value = drift_cli.ks_2samp(np.arange(100.0), np.arange(100.0) + 1000)
    assert statistic == 1.0 and p_value < 1e-20
    statistic, p_value = drift_cli.ks_2samp(np.arange(100.0), np.arange(100.0))
    assert statistic == 0.0 and p_value == 1.0
    statistic, _ = drift_cli.ks_2samp(np.arange(4.0), np.arange(2.0, 6.0))
    assert statistic == 0.5


def test_times_are_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sydney keeps summer time in December: a local-time conversion would be an hour
    off there."""
    monkeypatch.setenv("TZ", "Australia/Sydney")
    time.tzset()
    try:
        expected = calendar.timegm((2026, 12, 6, 8, 0, 0, 0, 0, 0))
        assert drift_cli._epoch("2026-12-06T08:00:00.123Z") == expected
        assert drift_cli._since("2026-12-06T08:00:00") == expected
        assert drift_cli._epoch("yesterday") == 0.0
    finally:
        monkeypatch.undo()
        time.tzset()
