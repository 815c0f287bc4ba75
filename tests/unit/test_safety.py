from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest

from mlapi.errors import UnsafeModelFile
from mlapi.repository import safety
from tests.fixtures.models import DEFAULT_ONNX, write_pickle


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_content_is_recognised_whatever_the_name(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=protocol))
    assert safety.looks_like_pickle(path)


def test_torch_style_zip_with_a_pickle_inside_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    assert safety.looks_like_pickle(path)


def test_onnx_and_plain_files_are_not_pickles(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert not safety.looks_like_pickle(DEFAULT_ONNX)
    assert not safety.looks_like_pickle(text)


def test_folder_check_refuses_and_names_the_setting(tmp_path: Path) -> None:
    write_pickle(tmp_path / "sub" / "model.joblib")
    with pytest.raises(UnsafeModelFile) as caught:
        safety.check_folder(tmp_path, allow_pickle=False)
    assert "MLAPI_ALLOW_PICKLE" in caught.value.message
    assert str(tmp_path) not in caught.value.message  # no host path leaks
    safety.check_folder(tmp_path, allow_pickle=True)  # the operator said: trusted


def test_a_zip_its_reader_refuses_is_no_pickle_and_no_crash(tmp_path: Path) -> None:
    """zipfile.is_zipfile raises (not returns False) on a zip64 end record that names
    several disks: the fuzzer's find (fuzz/corpus/tar/zip64-several-disks)."""
    import struct

    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 2)  # zip64 locator: 2 disks
    end = b"PK\x05\x06" + bytes(18)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"PK" + locator + end)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.is_zipfile(path)  # (what the check called before)
    assert not safety.looks_like_pickle(path)
    safety.check_folder(tmp_path, allow_pickle=False)  # neither refused nor raised
