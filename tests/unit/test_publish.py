"""``mlapi models publish``'s limits, in-process: a refused publish leaves the
repository as it was, and what one publish may bring is capped before it is written."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from mlapi.errors import ConfigError
from mlapi.repository import publish
from mlapi.repository.scan import scan
from tests.fixtures.archives import tar_of


def _tar(members: dict[str, bytes], sparse: str | None = None) -> io.BytesIO:
    return io.BytesIO(tar_of(members, sparse))


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text("class M:\n    def predict(self, x):\n        return x\n")
    return folder


def test_a_refused_publish_of_a_new_model_leaves_no_folder(tmp_path: Path) -> None:
    """A new model's folder made for a publish that is then refused (here: a pickle)
    would be a model with no versions to every server polling the volume."""
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    (source / "weights.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(ConfigError, match="pickle"):
        publish.publish(repository, "fresh", None, source=source)
    assert list(repository.iterdir()) == []
    assert scan(repository) == []


def test_a_refused_publish_of_a_known_model_keeps_its_folder_and_versions(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    publish.publish(repository, "m", 1, source=_model(tmp_path / "src"))
    with pytest.raises(ConfigError, match="is a sparse file"):
        publish.publish(repository, "m", None, archive=_tar({}, sparse="x"))
    assert [p.name for p in (repository / "m").iterdir()] == ["1"]


def test_a_publish_is_capped_in_files_and_bytes_before_it_is_written(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    many = {f"f{i}.txt": b"x" for i in range(6)}
    with pytest.raises(ConfigError, match=r"more than 5 files \(MLAPI_PUBLISH_MAX_FILES"):
        publish.publish(repository, "m", 1, archive=_tar(many), budget=publish.Budget(10**6, 5))
    big = {"model.py": b"y" * 2000}
    with pytest.raises(ConfigError, match=r"larger than 1,000 bytes \(MLAPI_PUBLISH_MAX_BYTES"):
        publish.publish(repository, "m", 1, archive=_tar(big), budget=publish.Budget(1000, 5))
    source = _model(tmp_path / "src")
    (source / "data.bin").write_bytes(b"z" * 2000)
    with pytest.raises(ConfigError, match="MLAPI_PUBLISH_MAX_BYTES"):
        publish.publish(repository, "m", 1, source=source, budget=publish.Budget(1000, 5))
    assert list(repository.iterdir()) == []  # nothing left of three refusals
    publish.publish(repository, "m", 1, source=source, budget=publish.Budget(10_000, 5))
    assert (repository / "m" / "1" / "data.bin").stat().st_size == 2000


def test_a_sparse_member_is_refused_whatever_size_it_announces(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    archive = _tar({"model.py": b"class M: pass\n"}, sparse="huge.bin")
    with pytest.raises(ConfigError, match=r"'huge\.bin' in the archive is a sparse file"):
        publish.publish(repository, "m", 1, archive=archive)
    assert list(repository.iterdir()) == []


def test_a_folder_holding_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    """Copying a FIFO would block on it (or fail with a traceback): lstat first."""
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    os.mkfifo(source / "pipe")
    with pytest.raises(ConfigError, match="'pipe' is not a plain file or folder"):
        publish.publish(repository, "m", 1, source=source)
    assert list(repository.iterdir()) == []
