"""A version's manifest alone: what verify refuses, and a fingerprint that follows
the files, names of raw bytes included (a copy made by other means than publish)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlapi.errors import ModelLoadError
from mlapi.repository import manifest


def _version(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.py").write_text("x = 1\n")
    manifest.write(folder)
    return folder


def test_verify_passes_the_files_it_lists_and_names_the_first_that_differs(tmp_path: Path) -> None:
    folder = _version(tmp_path / "1")
    manifest.verify(folder)
    (folder / "model.py").write_text("x = 2\n")
    with pytest.raises(ModelLoadError, match=r"'model\.py' does not match its sha256"):
        manifest.verify(folder)
    (folder / "model.py").unlink()
    with pytest.raises(ModelLoadError, match=r"'model\.py' is in manifest\.json but missing"):
        manifest.verify(folder)


def test_a_name_that_is_not_utf8_is_refused_by_name_and_still_fingerprinted(
    tmp_path: Path,
) -> None:
    folder = _version(tmp_path / "1")
    before = manifest.fingerprint(folder)
    raw = os.fsencode(folder) + b"/w\xff.bin"
    os.close(os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644))
    after = manifest.fingerprint(folder)
    assert after and after != before  # it used to raise UnicodeEncodeError: the poll stopped
    with pytest.raises(ModelLoadError, match=r"file 'w\\udcff\.bin' has a name that is not"):
        manifest.verify(folder)
    os.unlink(raw)
    (folder / "tab\there").write_text("")
    with pytest.raises(ModelLoadError, match=r"file 'tab\\there' has a name that is not"):
        manifest.verify(folder)


def test_a_file_named_like_the_manifest_below_the_top_is_the_model_s_and_is_checked(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "1"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "manifest.json").write_text("{}")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "m.pyc").write_bytes(b"\x00")
    manifest.write(folder)
    assert [p.relative_to(folder).as_posix() for p in manifest.files_of(folder)] == [
        "sub/manifest.json"
    ]
    (folder / "sub" / "manifest.json").write_text('{"changed": 1}')
    with pytest.raises(ModelLoadError, match=r"'sub/manifest\.json' does not match"):
        manifest.verify(folder)
