from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlapi.errors import ModelLoadError
from mlapi.repository import config, scan
from mlapi.tensors import TensorSpec


def _version(root: Path, name: str, version: int | str, toml: str | None = None) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x")
    if toml is not None:
        (folder / "model.toml").write_text(toml)
    return folder


def test_newest_version_is_served_by_default(tmp_path: Path) -> None:
    for v in (1, 3, 2):
        _version(tmp_path, "m", v)
    (entry,) = scan.scan(tmp_path)
    assert entry.available == (1, 2, 3)
    assert [v.version for v in entry.versions] == [3]


def test_policy_latest_n_and_pinned_versions(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        _version(tmp_path, "m", v)
    (tmp_path / "m" / "model.toml").write_text("[version_policy]\nlatest = 2\n")
    assert [v.version for v in scan.scan(tmp_path)[0].versions] == [2, 3]
    (tmp_path / "m" / "model.toml").write_text("[version_policy]\nversions = [1, 3, 9]\n")
    assert [v.version for v in scan.scan(tmp_path)[0].versions] == [1, 3]


def test_model_version_pin_overrides_policy_and_reports_a_missing_version(tmp_path: Path) -> None:
    for v in (1, 2):
        _version(tmp_path, "m", v)
    assert [v.version for v in scan.scan(tmp_path, pinned_version=1)[0].versions] == [1]
    (entry,) = scan.scan(tmp_path, pinned_version=7)
    assert entry.error is not None and "MODEL_VERSION=7" in entry.error and "1, 2" in entry.error


def test_problems_are_recorded_per_model_not_raised(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _version(tmp_path, "bad_toml", 1, "runtime = \n")
    _version(tmp_path, "good", 1)
    (tmp_path / "not-a-model.txt").write_text("ignored")
    entries = {e.name: e for e in scan.scan(tmp_path)}
    assert set(entries) == {"empty", "bad_toml", "good"}
    assert entries["empty"].error is not None and "no version folders" in entries["empty"].error
    assert entries["bad_toml"].error is not None and "TOML" in entries["bad_toml"].error
    assert entries["good"].error is None and entries["good"].versions[0].error is None


def test_version_config_overrides_model_config(tmp_path: Path) -> None:
    _version(tmp_path, "m", 1, "[batching]\nmax_delay_ms = 5\n")
    (tmp_path / "m" / "model.toml").write_text(
        'runtime = "onnx"\n[batching]\nmax_batch_size = 8\nmax_delay_ms = 1\n'
    )
    parsed = scan.scan(tmp_path)[0].versions[0].config
    assert parsed is not None
    assert parsed.runtime == "onnx"
    assert (parsed.batching.max_batch_size, parsed.batching.max_delay_ms) == (8, 5.0)


def test_full_config_parses_into_typed_values() -> None:
    parsed = config.parse(
        {
            "runtime": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
            "labels": ["a", "b"],
            "warmup": {"inputs": {"x": [[1, 2, 3, 4]]}},
        }
    )
    assert parsed.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert parsed.outputs == (TensorSpec("y", "INT64", (-1,)),)
    assert parsed.labels == ("a", "b")
    assert parsed.warmup.inputs == {"x": [[1, 2, 3, 4]]}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"runtme": "onnx"}, "unknown key"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0]}]}, "shape"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}] * 2}, "duplicate"),
        ({"batching": {"max_delay_ms": -1}}, "max_delay_ms"),
        ({"batching": {"size": 3}}, "unknown key"),
        ({"version_policy": {"latest": 0}}, "latest"),
        ({"labels": "a,b"}, "labels"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment):
        config.parse(raw)


NOT_FINITE = [float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize(
    ("section", "key", "too_big"),
    [
        ("batching", "max_batch_size", 1_000_001),
        ("batching", "max_delay_ms", 10_001),
        ("batching", "max_queue", 1_000_001),
        ("rollout", "bake_s", 604_801),
        ("rollout", "window_s", 604_801),
        ("rollout", "max_error_ratio", 1.01),
        ("rollout", "min_requests", 1_000_001),
    ],
)
def test_every_number_in_model_toml_is_finite_and_in_its_range(
    section: str, key: str, too_big: float
) -> None:
    """inf and nan are TOML floats: `max_batch_size = inf` crashed the poll and the
    start (int(inf)), `bake_s = nan` turned rollback off, `max_error_ratio = nan`
    never rolled back. Each is a FAILED reason naming the key, as an out-of-range
    value is."""
    for value in [*NOT_FINITE, too_big, -1]:
        with pytest.raises(ModelLoadError, match=rf"\[{section}\] {key} must be a finite"):
            config.parse({section: {key: value}})
    config.parse({section: {key: 1}})  # an ordinary value in range passes


def test_memory_mb_is_finite_and_over_zero() -> None:
    for value in [*NOT_FINITE, 0, -5, float(1 << 25)]:
        with pytest.raises(ModelLoadError, match="'memory_mb' must be a finite number"):
            config.parse({"memory_mb": value})
    assert config.parse({"memory_mb": 300}).memory_mb == 300.0


def test_a_model_toml_with_inf_fails_its_model_alone(tmp_path: Path) -> None:
    """One bad model.toml is that model's reason; the scan goes on to the others."""
    for name, text in [("bad", "[batching]\nmax_batch_size = inf\n"), ("good", "")]:
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.toml").write_text(text)
    entries = {entry.name: entry for entry in scan.scan(tmp_path)}
    assert "max_batch_size must be a finite number" in str(entries["bad"].error)
    assert entries["good"].error is None and entries["good"].versions[0].error is None


def _seed_in_a_process(repository: str) -> list[str]:
    from mlapi.repository.publish import seed
    from mlapi.settings import DEFAULT_MODEL_PATH

    return seed(Path(repository), DEFAULT_MODEL_PATH)


def test_seeding_fills_an_empty_repository_once_even_when_replicas_race(tmp_path: Path) -> None:
    """Eight processes seed the same empty folder at once (replicas starting together
    on a fresh volume): one publishes iris/1, whole and with its manifest; the others
    keep it; a repository with a model is never touched."""
    import multiprocessing

    from mlapi.repository import manifest
    from mlapi.repository.publish import seed
    from mlapi.settings import DEFAULT_MODEL_PATH

    repository = tmp_path / "repo"
    repository.mkdir()
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        results = pool.map(_seed_in_a_process, [str(repository)] * 8)
    assert sorted(map(len, results)) == [0] * 7 + [1] and ["iris/1"] in results
    version = repository / "iris" / "1"
    assert sorted(p.name for p in version.iterdir()) == sorted(
        [*(p.name for p in (DEFAULT_MODEL_PATH / "iris" / "1").iterdir()), manifest.MANIFEST]
    )
    assert [p.name for p in (repository / "iris").iterdir()] == ["1"]  # no staging left
    (repository / "iris" / "1" / "model.toml").write_text("# mine\n")
    assert seed(repository, DEFAULT_MODEL_PATH) == []
    assert (repository / "iris" / "1" / "model.toml").read_text() == "# mine\n"
    other = tmp_path / "other"
    (other / "mine" / "3").mkdir(parents=True)
    assert seed(other, DEFAULT_MODEL_PATH) == []
    assert [p.name for p in other.iterdir()] == ["mine"]


def test_seeding_brings_a_newer_bundled_version_and_nothing_older(tmp_path: Path) -> None:
    """A new image whose bundled model has version 2 publishes it into a repository
    that serves version 1 (every server then rolls it out); an older image brings
    nothing back into a repository that moved on."""
    import shutil

    from mlapi.repository.publish import seed
    from mlapi.settings import DEFAULT_MODEL_PATH

    repository = tmp_path / "repo"
    repository.mkdir()
    assert seed(repository, DEFAULT_MODEL_PATH) == ["iris/1"]
    newer = tmp_path / "newer"
    shutil.copytree(DEFAULT_MODEL_PATH / "iris" / "1", newer / "iris" / "1")
    shutil.copytree(DEFAULT_MODEL_PATH / "iris" / "1", newer / "iris" / "2")
    assert seed(repository, newer) == ["iris/2"]
    assert seed(repository, newer) == []
    shutil.rmtree(repository / "iris" / "1")  # retired by its operator
    assert seed(repository, DEFAULT_MODEL_PATH) == []  # an older image brings it not back
    assert sorted(p.name for p in (repository / "iris").iterdir()) == ["2"]


def test_repository_files_are_read_only_when_regular_and_under_their_cap(tmp_path: Path) -> None:
    from mlapi.repository import files

    small = tmp_path / "model.toml"
    small.write_bytes(b"x" * 100)
    assert files.read_capped(small, 100) == b"x" * 100
    with pytest.raises(files.NotReadable, match="is over 99 bytes"):
        files.read_capped(small, 99)
    os.mkfifo(tmp_path / "fifo")  # opened without blocking, then refused by its type
    with pytest.raises(files.NotReadable, match="is not a regular file"):
        files.read_capped(tmp_path / "fifo", 100)
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(files.NotReadable, match="is not a regular file"):
        files.read_capped(tmp_path / "zero", 100)
    with pytest.raises(FileNotFoundError):
        files.read_capped(tmp_path / "missing", 100)
    # a version folder whose model.toml is a FIFO: a reason, not a hang
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    os.mkfifo(tmp_path / "repo" / "m" / "1" / "model.toml")
    (entry,) = scan.scan(tmp_path / "repo")
    assert entry.error == "1/model.toml is not a regular file"
