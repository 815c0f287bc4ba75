"""Scan ``MODEL_PATH``: every folder is a model, every all-digit folder under it a
version. Problems are recorded on the entry, never raised, so one broken model
cannot stop the others from loading. A scan reads the file system (a version of
50,000 files takes a second and more to fingerprint): a server runs it off its
event loop."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mlapi.errors import ModelLoadError
from mlapi.repository import config as model_config
from mlapi.repository import manifest, rollback

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # used with fullmatch
VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII only: isdigit() takes '²'


@dataclass(frozen=True)
class VersionEntry:
    name: str
    version: int
    path: Path
    config: model_config.ModelConfig | None
    error: str | None = None
    fingerprint: str = ""  # of the version's files (manifest.fingerprint), taken by the scan


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    available: tuple[int, ...]
    versions: tuple[VersionEntry, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = field(default=())
    rolled_back: dict[int, str] = field(default_factory=dict)  # version -> why
    refused: dict[int, str] = field(default_factory=dict)  # by a gate: version -> why
    # the newest version, on trial under its gate (shadow or canary) beside ``versions``
    trial: VersionEntry | None = None


def scan(root: Path, pinned_version: int | None = None) -> list[ModelEntry]:
    """Every model under ``root``, sorted by name. ``root`` must be a folder."""
    if not root.is_dir():
        raise ModelLoadError("MODEL_PATH is not a folder")
    entries = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and MODEL_NAME.fullmatch(child.name):
            entries.append(scan_model(child, pinned_version))
    return entries


def model_folders(root: Path) -> list[tuple[str, bool]]:
    """(name, whether it has a version folder) of every model folder under ``root``."""
    return [
        (child.name, _has_versions(child))
        for child in sorted(root.iterdir())
        if child.is_dir() and MODEL_NAME.fullmatch(child.name)
    ]


def _has_versions(model_dir: Path) -> bool:
    try:
        return any(VERSION.fullmatch(c.name) and c.is_dir() for c in model_dir.iterdir())
    except OSError:  # removed or unreadable meanwhile: scan_model says why, if it stays
        return True


def scan_model(model_dir: Path, pinned_version: int | None = None) -> ModelEntry:
    name = model_dir.name
    notes = []
    available = []
    for child in model_dir.iterdir():
        if child.is_dir() and VERSION.fullmatch(child.name):
            available.append(int(child.name))
        elif child.is_dir() and not child.name.startswith((".", "_")):
            notes.append(f"ignored folder '{child.name}': version folders are positive integers")
    available.sort()
    if not available:
        return ModelEntry(name, model_dir, (), error="no version folders (expected <name>/1/)")
    try:
        model_raw = model_config.read_raw(model_dir / model_config.CONFIG_FILE)
        newest_raw = model_config.read_raw(
            model_dir / str(available[-1]) / model_config.CONFIG_FILE
        )
        policy = model_config.parse(model_config.merge(model_raw, newest_raw)).version_policy
    except ModelLoadError as exc:
        return ModelEntry(name, model_dir, tuple(available), error=exc.message)

    marks: dict[int, str] = {}
    refused: dict[int, str] = {}
    trial = None
    entries: dict[int, VersionEntry] = {}  # each version read and fingerprinted once

    def entry_of(version: int) -> VersionEntry:
        if version not in entries:
            entries[version] = _version_entry(name, model_dir, version, model_raw)
        return entries[version]

    if pinned_version is not None:
        if pinned_version not in available:
            listed = ", ".join(map(str, available))
            return ModelEntry(
                name,
                model_dir,
                tuple(available),
                error=f"MODEL_VERSION={pinned_version} not found (available: {listed})",
            )
        selected = [pinned_version]
    else:  # a rolled-back or refused version is left out of the choice (a pin never moves)
        marks = rollback.rolled_back(model_dir)
        decided = rollback.decisions(model_dir)
        refused = {v: why for v, (decision, why) in decided.items() if decision == "refused"}
        choice = [v for v in available if v not in marks and v not in refused]
        selected = policy.select(choice)
        if not selected:
            return ModelEntry(
                name, model_dir, tuple(available), error="version_policy selects no version"
            )
        newest = selected[-1]
        # a version older than one already decided on (or rolled back) was what served
        # then: it is not tried again
        settled = max([*decided, *marks], default=0)
        if newest > settled:
            trial, selected = _trial(entry_of(newest), policy, choice, selected)
    versions = tuple(entry_of(v) for v in selected)
    return ModelEntry(
        name,
        model_dir,
        tuple(available),
        versions,
        notes=tuple(notes),
        rolled_back=marks,
        refused=refused,
        trial=trial,
    )


def _trial(
    entry: VersionEntry,
    policy: model_config.VersionPolicy,
    choice: list[int],
    selected: list[int],
) -> tuple[VersionEntry | None, list[int]]:
    """(the trial, what serves meanwhile): the newest selected version (``entry``) is on trial
    when its rollout is gated, nothing is decided on it or on a newer one, and an
    older version can serve while it is tried; what serves is then the policy's
    choice without it. A first version has nothing to be compared with: it serves."""
    if entry.config is None or not entry.config.rollout.gated:
        return None, selected
    rest = policy.select([v for v in choice if v != entry.version])
    if not rest:
        return None, selected
    return entry, rest


def _version_entry(name: str, model_dir: Path, version: int, model_raw: dict) -> VersionEntry:  # type: ignore[type-arg]
    path = model_dir / str(version)
    fingerprint = manifest.fingerprint(path)
    try:
        raw = model_config.read_raw(path / model_config.CONFIG_FILE)
        parsed = model_config.parse(model_config.merge(model_raw, raw))
    except ModelLoadError as exc:
        return VersionEntry(name, version, path, None, exc.message, fingerprint)
    return VersionEntry(name, version, path, parsed, None, fingerprint)
