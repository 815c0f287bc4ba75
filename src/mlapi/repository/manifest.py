"""A version folder's manifest (``manifest.json``: the sha256 of every file, written
by ``mlapi models publish``) and its fingerprint: what tells a server that the
files of a version changed. With a manifest, every file is checked against it
before the version loads; a folder without one (copied by other means) loads as
it is."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import orjson

from mlapi.errors import ModelLoadError
from mlapi.repository import files

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_of(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` but the manifest (at the top: a file of
    that name below is the model's) and Python's bytecode caches (written when a
    model.py is imported), sorted, hidden ones too."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.relative_to(folder).as_posix() != MANIFEST
        and "__pycache__" not in path.relative_to(folder).parts
    )


def build(folder: Path) -> dict[str, object]:
    hashes = {path.relative_to(folder).as_posix(): sha256_of(path) for path in files_of(folder)}
    return {"format": 1, "files": hashes}


def write(folder: Path) -> None:
    (folder / MANIFEST).write_bytes(orjson.dumps(build(folder), option=orjson.OPT_INDENT_2))


def verify(folder: Path) -> None:
    """ModelLoadError naming the first file that does not match the manifest (changed,
    missing, or not listed in it). No manifest: nothing to check."""
    try:
        document = orjson.loads(files.read_capped(folder / MANIFEST, files.MANIFEST_MAX_BYTES))
        listed = document["files"]
        if not isinstance(listed, dict):
            raise TypeError
    except FileNotFoundError:
        return
    except files.NotReadable as exc:
        raise ModelLoadError(f"'{MANIFEST}' {exc}") from None
    except (orjson.JSONDecodeError, KeyError, TypeError, OSError):
        raise ModelLoadError(f"'{MANIFEST}' is not a manifest written by mlapi") from None
    present = {p.relative_to(folder).as_posix(): p for p in files_of(folder)}
    for name in present:
        if not name.isprintable() or _not_utf8(name):
            shown = ascii(name[:64])[1:-1]
            raise ModelLoadError(f"file '{shown}' has a name that is not printable UTF-8")
    for name, expected in sorted(listed.items()):
        found = present.get(name)
        if found is None:
            raise ModelLoadError(f"file '{name}' is in {MANIFEST} but missing")
        if sha256_of(found) != expected:
            raise ModelLoadError(f"file '{name}' does not match its sha256 in {MANIFEST}")
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise ModelLoadError(f"file '{unlisted[0]}' is not in {MANIFEST}")


def _not_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def fingerprint(folder: Path) -> str:
    """Changes whenever the version's files do: every file's name, size and
    modification time, and the manifest's own bytes when there is one."""
    digest = hashlib.sha256()
    try:
        with contextlib.suppress(FileNotFoundError):
            digest.update(files.read_capped(folder / MANIFEST, files.MANIFEST_MAX_BYTES))
        for path in files_of(folder):
            stat = path.stat()
            name = os.fsencode(path.relative_to(folder))  # a name of raw bytes included
            digest.update(name + f":{stat.st_size}:{stat.st_mtime_ns};".encode())
    except OSError:
        return ""  # the folder changes under us: the next look sees it settled
    return digest.hexdigest()
