"""``mlapi models publish``'s limits, in-process: a refused publish leaves the
repository as it was, and what one publish may bring is capped before it is written."""

from __future__ import annotations

import io
import os
import tarfile
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


def _gnu_tar(name: str) -> io.BytesIO:
    """A GNU tar whose one member's name is raw bytes (``name`` as Python reads them,
    a byte that is not UTF-8 escaped as a lone surrogate)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.GNU_FORMAT) as tar:
        member = tarfile.TarInfo(name)
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    archive.seek(0)
    return archive


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("weights\udcff.bin", r"'weights\\udcff\.bin' in the archive is not a UTF-8 name"),
        ("dir\udcfe/model.py", r"'dir\\udcfe/model\.py' in the archive is not a UTF-8 name"),
        ("a\nb.py", r"'a\\nb\.py' in the archive has a control character in its name"),
        ("a\x7fb", r"'a\\x7fb' in the archive has a control character"),
    ],
)
def test_an_archive_member_name_that_is_not_printable_utf8_is_refused(
    tmp_path: Path, name: str, why: str
) -> None:
    """Found by `make fuzz` (tar): such a name reached the manifest's JSON writer
    and failed there with a TypeError, not a refusal."""
    repository = tmp_path / "repo"
    repository.mkdir()
    with pytest.raises(ConfigError, match=why):
        publish.publish(repository, "m", 1, archive=_gnu_tar(name))
    assert list(repository.iterdir()) == []


def test_a_folder_holding_a_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    os.close(os.open(os.fsencode(source) + b"/w\xe9.bin", os.O_CREAT | os.O_WRONLY, 0o644))
    with pytest.raises(ConfigError, match=r"'w\\udce9\.bin' is not a UTF-8 name"):
        publish.publish(repository, "m", 1, source=source)
    assert list(repository.iterdir()) == []
    (source / "wé.bin").write_bytes(b"ok")  # UTF-8 that is not ASCII is a name like any other
    os.unlink(os.fsencode(source) + b"/w\xe9.bin")
    final = publish.publish(repository, "m", 1, source=source)
    assert (final / "wé.bin").read_bytes() == b"ok"
