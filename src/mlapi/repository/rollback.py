"""Rolled-back versions, recorded in the repository itself so that every worker of
every replica sharing it follows: ``<model>/.rolled-back-<version>`` holds why, and
the fingerprint of the version's files at that moment. Such a version is left out
of the version policy's choice until its files change (then the mark is stale)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from mlapi.repository import files, manifest

_PREFIX = ".rolled-back-"


def mark(model_dir: Path, version: int, reason: str) -> None:
    """Record that ``version`` was rolled back (written whole, then renamed in)."""
    folder = model_dir / str(version)
    document = {"reason": reason, "fingerprint": manifest.fingerprint(folder)}
    path = model_dir / f"{_PREFIX}{version}"
    tmp = model_dir / f"{_PREFIX}{version}.{os.getpid()}.tmp"
    tmp.write_bytes(orjson.dumps(document))
    tmp.replace(path)


def rolled_back(model_dir: Path) -> dict[int, str]:
    """{version: reason} of the versions rolled back and unchanged since."""
    found: dict[int, str] = {}
    try:
        marks = [p for p in model_dir.iterdir() if p.name.startswith(_PREFIX)]
    except OSError:
        return found
    for path in marks:
        number = path.name.removeprefix(_PREFIX)
        if not (number.isascii() and number.isdigit()):
            continue
        try:
            document = orjson.loads(files.read_capped(path, files.MARK_MAX_BYTES))
            reason, fingerprint = str(document["reason"]), str(document["fingerprint"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if fingerprint == manifest.fingerprint(model_dir / number):
            found[int(number)] = reason
    return found
