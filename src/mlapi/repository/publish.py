"""Publishing a model version into a repository so that no server ever sees it half
written: the files are copied under a hidden name in the model's own folder (the
same filesystem), flushed, given a manifest, then renamed into place at once. A
second publish of the same version loses the rename and is refused.

A publish that is refused leaves the repository as it found it: no staging folder,
and no empty model folder (which every server polling the volume would report as a
model with no versions). What one publish may bring is capped in bytes and in files
(MLAPI_PUBLISH_MAX_BYTES, MLAPI_PUBLISH_MAX_FILES), counted before the bytes are
written, and it may hold only plain files and folders."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from mlapi.errors import ConfigError, MlapiError
from mlapi.repository import config as model_config
from mlapi.repository import manifest, safety, strategies
from mlapi.repository.scan import MODEL_NAME, VERSION

# Python's own check of archive members, where it has one (3.11.4 and newer): ours
# above already refuses links, devices, absolute paths and '..'.
_SAFE_EXTRACT: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_FILES = 10_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Budget:
    """What one publish may still bring: bytes and files, counted as they come."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES):
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = self.files = 0

    def take(self, name: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.max_files:
            raise ConfigError(
                f"the model has more than {self.max_files:,} files "
                f"(MLAPI_PUBLISH_MAX_FILES): '{name[:64]}' is one too many"
            )
        if self.bytes > self.max_bytes:
            raise ConfigError(
                f"the model is larger than {self.max_bytes:,} bytes (MLAPI_PUBLISH_MAX_BYTES) "
                f"by '{name[:64]}'"
            )


def check_name(name: str, where: str = "") -> None:
    """A file or folder name a publish may bring: UTF-8 (it is written into the
    manifest, the logs and JSON error bodies) and free of control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"'{ascii(name[:64])[1:-1]}'{where} is not a UTF-8 name") from None
    if _CONTROL.search(name):
        raise ConfigError(f"'{ascii(name[:64])[1:-1]}'{where} has a control character in its name")


def default_name(source: Path) -> str:
    """A version folder ``iris/3`` publishes as ``iris``; a folder ``iris`` as ``iris``."""
    return source.parent.name if VERSION.fullmatch(source.name) else source.name


def versions_of(model_dir: Path) -> list[int]:
    """The version numbers in a model's folder, in order (none when it is missing)."""
    return sorted(int(p.name) for p in _children(model_dir) if VERSION.fullmatch(p.name))


def next_version(model_dir: Path) -> int:
    return max(versions_of(model_dir), default=0) + 1


def publish(
    repository: Path,
    name: str,
    version: int | None,
    source: Path | None = None,
    archive: BinaryIO | None = None,
    allow_pickle: bool = False,
    budget: Budget | None = None,
    strategy: str | None = None,
) -> Path:
    """Copy ``source`` (a folder) or ``archive`` (a tar stream) into
    ``repository/name/version`` (with ``strategy``, written into its model.toml's
    ``[rollout]``); the new version folder. ConfigError on bad input, and then
    nothing of this publish is left in the repository."""
    if not repository.is_dir():
        raise ConfigError(f"model repository {repository} is not a folder")
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"'{name[:64]}' is not a model name (letters, digits, '_', '.', '-')")
    if version is not None and version < 1:
        raise ConfigError("a version is a positive integer")
    model_dir = repository / name
    try:
        model_dir.mkdir()
        created = True
    except FileExistsError:
        created = False
    try:
        return _publish_into(
            model_dir, version, source, archive, allow_pickle, budget or Budget(), strategy
        )
    except BaseException:
        if created:  # a new model that did not come: its folder goes (if still empty)
            with contextlib.suppress(OSError):
                model_dir.rmdir()
        raise


def _publish_into(
    model_dir: Path,
    version: int | None,
    source: Path | None,
    archive: BinaryIO | None,
    allow_pickle: bool,
    budget: Budget,
    strategy: str | None = None,
) -> Path:
    name = model_dir.name
    number = version if version is not None else next_version(model_dir)
    final = model_dir / str(number)
    if final.exists():
        raise ConfigError(f"{name} version {number} already exists in {model_dir.parent}")
    staging = model_dir / f".publish-{number}-{secrets.token_hex(4)}"
    try:
        if source is not None:
            _copy_folder(source, staging, budget)
        else:
            assert archive is not None
            _extract(archive, staging, budget)
        if not manifest.files_of(staging):
            raise ConfigError("nothing to publish: the source has no files")
        try:
            safety.check_folder(staging, allow_pickle)
        except MlapiError as exc:
            raise ConfigError(exc.message) from None
        if strategy is not None:
            strategies.write(staging / model_config.CONFIG_FILE, strategy)
        manifest.write(staging)
        _flush(staging)
        try:
            staging.rename(final)  # atomic; fails if another publish got there first
        except OSError:
            raise ConfigError(
                f"{name} version {number} was published by someone else meanwhile"
            ) from None
        _fsync_dir(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def seed(repository: Path, source: Path) -> list[str]:
    """Bring the versions of ``source`` (the models bundled in the package) into a
    repository, each published at once as by ``publish``: the way replicas that start
    together on a fresh volume fill it, with no one-shot service first and no replica
    ever seeing half a model. An empty repository gets every bundled version; a model
    it has gets the bundled versions newer than its newest (a new image that brings
    a newer default model: every server then rolls it out like any published
    version); a model it lacks is not added to a repository that has others. A version
    another replica published meanwhile is kept. What this call published."""
    present = {c.name: c for c in _children(repository) if not c.name.startswith(".")}
    published = []
    for model in _children(source):
        if present and model.name not in present:
            continue
        newest = max(versions_of(repository / model.name), default=0)
        for number in (n for n in versions_of(model) if n > newest):
            try:
                publish(repository, model.name, number, source=model / str(number))
            except ConfigError:
                if not (repository / model.name / str(number)).is_dir():
                    raise
                continue  # a sibling published it first
            published.append(f"{model.name}/{number}")
    return published


def _children(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _copy_folder(source: Path, staging: Path, budget: Budget) -> None:
    """Check every entry first (by lstat: a link, FIFO or device is refused, never
    opened, and the sizes are counted before a byte is copied), then copy."""
    if not source.is_dir():
        raise ConfigError(f"{source} is not a folder")
    skipped = ("__pycache__", manifest.MANIFEST)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        check_name(relative.as_posix())
        if skipped[0] in relative.parts or relative.as_posix() == skipped[1]:
            continue
        mode = path.lstat()
        if stat.S_ISLNK(mode.st_mode):
            raise ConfigError(f"'{relative}' is a symbolic link: copy real files")
        if stat.S_ISREG(mode.st_mode):
            budget.take(relative.as_posix(), mode.st_size)
        elif not stat.S_ISDIR(mode.st_mode):
            raise ConfigError(f"'{str(relative)[:64]}' is not a plain file or folder")

    def ignored(folder: str, names: list[str]) -> list[str]:
        """Caches anywhere; the old manifest at the top only (one below is a file)."""
        top = Path(folder) == source
        return [n for n in names if n == skipped[0] or (top and n == skipped[1])]

    shutil.copytree(source, staging, ignore=ignored)


def _extract(archive: BinaryIO, staging: Path, budget: Budget) -> None:
    staging.mkdir()
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for member in tar:
                check_name(member.name, " in the archive")
                parts = Path(member.name).parts
                if not (member.isfile() or member.isdir()):
                    raise ConfigError(f"'{member.name[:64]}' in the archive is not a plain file")
                if member.name.startswith("/") or ".." in parts:
                    raise ConfigError(f"'{member.name[:64]}' in the archive leaves its folder")
                if member.issparse():
                    raise ConfigError(f"'{member.name[:64]}' in the archive is a sparse file")
                if member.isfile():
                    budget.take(member.name, member.size)
                # no attributes from the archive (owner, mode, times): plain files of ours.
                # Python's own filter, where there is one, stands behind the checks above.
                tar.extract(member, staging, set_attrs=False, **_SAFE_EXTRACT)  # pragma: no mutate
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"the archive cannot be read ({type(exc).__name__})") from None
    stale = staging / manifest.MANIFEST
    stale.unlink(missing_ok=True)  # the manifest is written here, from these bytes


def _flush(folder: Path) -> None:
    """Every file and folder on disk before the rename makes them visible."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            _fsync_dir(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
