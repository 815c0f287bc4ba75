"""Refuse files that would be deserialised with pickle, before anything reads them
as a model: pickle runs arbitrary code on load. The check looks at names and at
content, so a renamed pickle is caught too."""

from __future__ import annotations

import zipfile
from pathlib import Path

from mlapi.errors import UnsafeModelFile

PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".sav", ".dill", ".cloudpkl"}
ALLOW_SETTING = "MLAPI_ALLOW_PICKLE=true"


def looks_like_pickle(path: Path) -> bool:
    """True for a file that starts with a pickle protocol header (protocol 2..5),
    or a zip archive that holds a pickle (PyTorch's format)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK":
        # a zip this reader cannot open (zipfile.is_zipfile itself raises on some, such
        # as a zip64 end record naming several disks) is no archive a loader here opens
        try:
            with zipfile.ZipFile(path) as archive:
                return any(Path(n).suffix in PICKLE_SUFFIXES for n in archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
            return False
    return False


def check_folder(model_dir: Path, allow_pickle: bool) -> None:
    """Raise UnsafeModelFile if any file in the version folder is a pickle and the
    operator has not said the files are trusted."""
    if allow_pickle:
        return
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES or looks_like_pickle(path):
            rel = path.relative_to(model_dir)
            raise UnsafeModelFile(
                f"refused '{rel}': pickle/joblib files can run arbitrary code when loaded. "
                f"Export the model to ONNX or skops, or, only if you trust this file, "
                f"set {ALLOW_SETTING}"
            )
