"""Rolled-back versions, recorded in the repository itself so that every worker of
every replica sharing it follows: ``<model>/.rolled-back-<version>`` holds why, and
the fingerprint of the version's files at that moment. Such a version is left out
of the version policy's choice until its files change (then the mark is stale).

A gated rollout's decision is recorded the same way, ``<model>/.gate-<version>``:
promoted (the version serves like any other) or refused (left out of the choice
like a rolled-back one); the first worker to decide writes it, every other one
follows at its next look."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from mlapi.repository import files, manifest

_PREFIX = ".rolled-back-"


def mark(model_dir: Path, version: int, reason: str) -> None:
    """Record that ``version`` was rolled back (written whole, then renamed in)."""
    document = {"reason": reason, "fingerprint": manifest.fingerprint(model_dir / str(version))}
    path, tmp = _staged(model_dir, _PREFIX, version, document)
    tmp.replace(path)


def _staged(
    model_dir: Path, prefix: str, version: int, document: dict[str, str]
) -> tuple[Path, Path]:
    """(the mark's path, a file beside it holding ``document`` whole, to be put in)."""
    tmp = model_dir / f"{prefix}{version}.{os.getpid()}.tmp"
    tmp.write_bytes(orjson.dumps(document))
    return model_dir / f"{prefix}{version}", tmp


def _marks(model_dir: Path, prefix: str) -> list[tuple[str, Path]]:
    """(version as its name says it, path) of the marks of a kind in a model folder."""
    try:
        paths = [p for p in model_dir.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    found = []
    for path in paths:
        number = path.name.removeprefix(prefix)
        if number.isascii() and number.isdigit():
            found.append((number, path))
    return found


def rolled_back(model_dir: Path) -> dict[int, str]:
    """{version: reason} of the versions rolled back and unchanged since."""
    found: dict[int, str] = {}
    for number, path in _marks(model_dir, _PREFIX):
        try:
            document = orjson.loads(files.read_capped(path, files.MARK_MAX_BYTES))
            reason, fingerprint = str(document["reason"]), str(document["fingerprint"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if fingerprint == manifest.fingerprint(model_dir / number):
            found[int(number)] = reason
    return found


# ----- a gated rollout's decision (shadow, canary): promoted or refused -------------
_GATE = ".gate-"
DECISIONS = ("promoted", "refused")


def decide(model_dir: Path, version: int, decision: str, reason: str) -> tuple[str, str]:
    """Record the gate's decision on ``version`` unless another worker or replica
    recorded one first (the first decision holds: created whole, linked in only if
    no mark is there). (the decision that holds, its reason)."""
    assert decision in DECISIONS
    folder = model_dir / str(version)
    document = {"decision": decision, "reason": reason, "fingerprint": manifest.fingerprint(folder)}
    path, tmp = _staged(model_dir, _GATE, version, document)
    try:
        os.link(tmp, path)
    except FileExistsError:
        held = _read_gate(path, folder)
        if held is None:  # a stale mark (the files changed since): this decision replaces it
            tmp.replace(path)
            return decision, reason
        return held
    finally:
        tmp.unlink(missing_ok=True)
    return decision, reason


def decisions(model_dir: Path) -> dict[int, tuple[str, str]]:
    """{version: (decision, reason)} of the gate marks whose version is unchanged since."""
    found: dict[int, tuple[str, str]] = {}
    for number, path in _marks(model_dir, _GATE):
        held = _read_gate(path, model_dir / number)
        if held is not None:
            found[int(number)] = held
    return found


def _read_gate(path: Path, folder: Path) -> tuple[str, str] | None:
    try:
        document = orjson.loads(files.read_capped(path, files.MARK_MAX_BYTES))
        decision, reason = str(document["decision"]), str(document["reason"])
        fingerprint = str(document["fingerprint"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if decision not in DECISIONS or fingerprint != manifest.fingerprint(folder):
        return None
    return decision, reason
