"""``mlapi models publish``'s limits, in-process: a refused publish leaves the
repository as it was, and what one publish may bring is capped before it is written."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mlapi.errors import ConfigError
from mlapi.repository import manifest, publish
from mlapi.repository.scan import scan
from tests.fixtures.archives import tar_of
from tests.fixtures.models import DEFAULT_ONNX


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


LONG = "n" * 100  # a name past the 64 characters an error message shows of it


def test_the_budget_counts_every_file_and_byte_up_to_its_limits_inclusive() -> None:
    budget = publish.Budget(max_bytes=10, max_files=2)
    assert (budget.bytes, budget.files) == (0, 0)
    budget.take("a", 4)
    budget.take("b", 6)  # exactly 10 bytes and 2 files: within
    assert (budget.bytes, budget.files) == (10, 2)
    with pytest.raises(ConfigError) as refused:
        budget.take(LONG, 0)
    assert refused.value.args[0] == (
        f"the model has more than 2 files (MLAPI_PUBLISH_MAX_FILES): '{LONG[:64]}' is one too many"
    )
    budget = publish.Budget(max_bytes=10, max_files=5)
    budget.take("a", 4)
    with pytest.raises(ConfigError) as refused:
        budget.take(LONG, 7)
    assert refused.value.args[0] == (
        f"the model is larger than 10 bytes (MLAPI_PUBLISH_MAX_BYTES) by '{LONG[:64]}'"
    )


def test_names_are_shown_cut_to_64_characters() -> None:
    with pytest.raises(ConfigError) as refused:
        publish.check_name("\x01" + LONG)
    assert refused.value.args[0] == (f"'\\x01{LONG[:63]}' has a control character in its name")
    with pytest.raises(ConfigError) as refused:
        publish.check_name("\udcff" + LONG, " here")
    assert refused.value.args[0] == f"'\\udcff{LONG[:63]}' here is not a UTF-8 name"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"name": "m", "version": 1, "repository": "missing"},
            "model repository {repo}/repo/missing is not a folder",
        ),
        (
            {"name": "../m", "version": 1},
            "'../m' is not a model name (letters, digits, '_', '.', '-')",
        ),
        (
            {"name": LONG + "/", "version": 1},
            f"'{(LONG + '/')[:64]}' is not a model name (letters, digits, '_', '.', '-')",
        ),
        ({"name": "m", "version": 0}, "a version is a positive integer"),
        ({"name": "m", "version": -3}, "a version is a positive integer"),
        (
            {"name": "m", "version": 1, "source": "empty"},
            "nothing to publish: the source has no files",
        ),
        (
            {"name": "m", "version": 1, "source": "nothing-there"},
            "{repo}/nothing-there is not a folder",
        ),
        (
            {"name": "m", "version": 1, "archive": b"not a tar"},
            "the archive cannot be read (ReadError)",
        ),
        (
            {"name": "m", "version": 1, "archive": {"/etc/x": b"x"}},
            "'/etc/x' in the archive leaves its folder",
        ),
        (
            {"name": "m", "version": 1, "archive": {"a/../../x": b"x"}},
            "'a/../../x' in the archive leaves its folder",
        ),
        (
            {"name": "m", "version": 1, "archive": {"a/b/..": b"x"}},
            "'a/b/..' in the archive leaves its folder",
        ),
    ],
)
def test_each_refusal_says_what_is_wrong(
    tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    arguments = dict(arguments)  # parametrize hands every run the same dict
    repository = tmp_path / "repo"
    repository.mkdir()
    (tmp_path / "empty").mkdir()
    where = repository / arguments.pop("repository") if "repository" in arguments else repository
    if "source" in arguments:
        arguments["source"] = tmp_path / arguments["source"]
    if isinstance(arguments.get("archive"), bytes):
        arguments["archive"] = io.BytesIO(arguments["archive"])
    elif "archive" in arguments:
        arguments["archive"] = _tar(arguments["archive"])
    elif "source" not in arguments:
        arguments["source"] = _model(tmp_path / "src")
    with pytest.raises(ConfigError) as refused:
        publish.publish(where, **arguments)
    assert refused.value.args[0] == message.format(repo=tmp_path)
    if where.is_dir():
        assert list(where.iterdir()) == []


def test_an_archive_s_links_and_devices_are_refused_by_name(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE):
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            member = tarfile.TarInfo(LONG)
            member.type, member.linkname = kind, "/etc/passwd"
            tar.addfile(member)
        archive.seek(0)
        with pytest.raises(ConfigError) as refused:
            publish.publish(repository, "m", 1, archive=archive)
        assert refused.value.args[0] == f"'{LONG[:64]}' in the archive is not a plain file"
    with pytest.raises(ConfigError) as refused:
        publish.publish(repository, "m", 1, archive=_tar({}, sparse=LONG))
    assert refused.value.args[0] == f"'{LONG[:64]}' in the archive is a sparse file"
    source = _model(tmp_path / "src")
    (source / LONG).symlink_to("/etc/passwd")
    with pytest.raises(ConfigError) as refused:
        publish.publish(repository, "m", 1, source=source)
    assert refused.value.args[0] == f"'{LONG}' is a symbolic link: copy real files"
    (source / LONG).unlink()
    os.mkfifo(source / LONG)
    with pytest.raises(ConfigError) as refused:
        publish.publish(repository, "m", 1, source=source)
    assert refused.value.args[0] == f"'{LONG[:64]}' is not a plain file or folder"
    assert list(repository.iterdir()) == []


class _Stream(io.RawIOBase):
    """A pipe, as `mlapi models publish -` reads stdin: it cannot seek."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_tar_stream_is_published_whole_with_a_fresh_manifest_and_plain_attributes(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:  # compressed, streamed
        for name, data in {"model.py": b"x = 1\n", "sub/w.bin": b"\x00" * 10}.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), 0o4777, 1
            member.uid = member.gid = 4242
            tar.addfile(member, io.BytesIO(data))
        stale = b'{"format": 1, "files": {}}'
        member = tarfile.TarInfo("manifest.json")
        member.size = len(stale)
        tar.addfile(member, io.BytesIO(stale))
    stream = io.BufferedReader(_Stream(archive.getvalue()))
    final = publish.publish(repository, "m", 7, archive=stream)
    assert final == repository / "m" / "7"
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == [
        "manifest.json",
        "model.py",
        "sub",
        "sub/w.bin",
    ]
    listed = json.loads((final / "manifest.json").read_text())["files"]
    assert sorted(listed) == ["model.py", "sub/w.bin"]  # written here, not the archive's
    for path in (final / "model.py", final / "sub" / "w.bin"):
        info = path.stat()
        assert info.st_uid == os.getuid() and not info.st_mode & 0o7000
        assert info.st_mtime > 10**9  # not the archive's 1970
    assert [p.name for p in (repository / "m").iterdir()] == ["7"]  # no staging left


def test_a_folder_is_published_without_its_caches_and_its_old_manifest(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00")
    (source / "manifest.json").write_text('{"format": 1, "files": {}}')
    (source / "sub").mkdir()
    (source / "sub" / "manifest.json").write_text("{}")  # a file of the model, kept
    final = publish.publish(repository, "m", None, source=source)
    assert final.name == "1"
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == [
        "manifest.json",
        "model.py",
        "sub",
        "sub/manifest.json",
    ]
    assert sorted(json.loads((final / "manifest.json").read_text())["files"]) == [
        "model.py",
        "sub/manifest.json",
    ]
    (source / "zz-link").symlink_to(source / "model.py")  # after the cache, in order
    with pytest.raises(ConfigError, match="'zz-link' is a symbolic link"):
        publish.publish(repository, "m", None, source=source)


def test_versions_are_numbered_after_the_newest_or_as_asked(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    assert publish.next_version(repository / "m") == 1
    assert publish.publish(repository, "m", None, source=source).name == "1"
    assert publish.publish(repository, "m", 5, source=source).name == "5"
    assert publish.next_version(repository / "m") == 6
    assert publish.publish(repository, "m", None, source=source).name == "6"
    with pytest.raises(ConfigError) as refused:
        publish.publish(repository, "m", 5, source=source)
    assert refused.value.args[0] == f"m version 5 already exists in {repository}"


def test_a_pickle_is_published_only_when_allowed(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    (source / "weights.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(ConfigError, match="pickle"):
        publish.publish(repository, "m", 1, source=source)
    final = publish.publish(repository, "m", 1, source=source, allow_pickle=True)
    assert (final / "weights.pkl").is_file()


def test_an_empty_folder_of_a_known_model_stays_when_a_publish_into_it_is_refused(
    tmp_path: Path,
) -> None:
    """Only a folder this publish made goes with its refusal."""
    repository = tmp_path / "repo"
    (repository / "m").mkdir(parents=True)
    with pytest.raises(ConfigError):
        publish.publish(repository, "m", 1, archive=io.BytesIO(b"junk"))
    assert (repository / "m").is_dir()


def test_a_publish_that_loses_the_race_for_its_version_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    real = manifest.write

    def meanwhile(folder: Path) -> None:  # another publisher renames its own first
        real(folder)
        (repository / "m" / "1").mkdir()
        (repository / "m" / "1" / "x").write_text("theirs")

    monkeypatch.setattr(manifest, "write", meanwhile)
    with pytest.raises(ConfigError) as refused:
        publish.publish(repository, "m", 1, source=_model(tmp_path / "src"))
    assert refused.value.args[0] == "m version 1 was published by someone else meanwhile"
    assert [p.name for p in (repository / "m").iterdir()] == ["1"]  # theirs, and no staging


def test_every_file_and_folder_is_flushed_before_the_rename_children_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    source = _model(tmp_path / "src")
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "w.bin").write_bytes(b"1")
    opened: dict[int, str] = {}
    synced: list[str] = []
    real_open = os.open

    def record_open(path: Any, flags: int, *rest: Any) -> int:
        fd = real_open(path, flags, *rest)
        opened[fd] = str(path)
        return fd

    monkeypatch.setattr(os, "open", record_open)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(opened[fd]))
    final = publish.publish(repository, "m", 1, source=source)
    staged = [Path(p) for p in synced if ".publish-1-" in p]
    root = next(p for p in staged if p.name.startswith(".publish-1-"))
    relative = [p.relative_to(root).as_posix() for p in staged]
    assert relative == ["model.py", "manifest.json", "a/b/w.bin", "a/b", "a", "."]
    assert synced[-1] == str(final.parent)  # then the rename itself


def _bundle(folder: Path, versions: dict[str, list[int]]) -> Path:
    for name, numbers in versions.items():
        for number in numbers:
            (folder / name / str(number)).mkdir(parents=True)
            (folder / name / str(number) / "model.py").write_text(f"v = {number}\n")
    return folder


def test_seeding_keeps_the_bundled_numbers_and_skips_models_a_used_repository_lacks(
    tmp_path: Path,
) -> None:
    bundled = _bundle(tmp_path / "bundled", {"a": [1, 3], "b": [1, 2]})
    repository = tmp_path / "repo"
    (repository / ".publish-9-abcd").mkdir(parents=True)  # hidden: not a model
    assert publish.seed(repository, bundled) == ["a/1", "a/3", "b/1", "b/2"]
    assert (repository / "a" / "3" / "model.py").read_text() == "v = 3\n"
    other = tmp_path / "other"
    (other / "b" / "1").mkdir(parents=True)
    (other / "b" / "1" / "model.py").write_text("mine\n")
    assert publish.seed(other, bundled) == ["b/2"]  # a is not added; b still comes after it
    assert sorted(p.name for p in other.iterdir()) == ["b"]


def test_a_version_a_sibling_seeded_first_is_kept_and_the_later_ones_still_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = _bundle(tmp_path / "bundled", {"a": [1, 2, 3]})
    repository = tmp_path / "repo"
    repository.mkdir()
    real = publish.publish

    def racing(repo: Path, name: str, version: int | None, **options: Any) -> Path:
        if version == 2:  # a sibling replica publishes it between the look and the copy
            (repo / name / "2").mkdir(parents=True)
        return real(repo, name, version, **options)

    monkeypatch.setattr(publish, "publish", racing)
    assert publish.seed(repository, bundled) == ["a/1", "a/3"]
    assert sorted(p.name for p in (repository / "a").iterdir()) == ["1", "2", "3"]
    (tmp_path / "fresh").mkdir()
    (tmp_path / "empty" / "c" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="nothing to publish"):  # other refusals still raise
        publish.seed(tmp_path / "fresh", tmp_path / "empty")


# ----- publish --strategy: one version's rollout strategy in its own model.toml -----
STRATEGY_CASES = {
    "no file": (None, '[rollout]\nstrategy = "shadow"\n'),
    "no table": (
        'runtime = "onnx"  # kept\n',
        'runtime = "onnx"  # kept\n\n[rollout]\nstrategy = "shadow"\n',
    ),
    "a table": (
        "[rollout] # gates\nbake_s = 5\n\n[batching]\nmax_batch_size = 8\n",
        '[rollout] # gates\nstrategy = "shadow"\nbake_s = 5\n\n[batching]\nmax_batch_size = 8\n',
    ),
    "the same": ('[rollout]\nstrategy = "shadow"\n', '[rollout]\nstrategy = "shadow"\n'),
}


@pytest.mark.parametrize("case", list(STRATEGY_CASES))
def test_publish_writes_the_strategy_into_the_versions_model_toml(
    tmp_path: Path, case: str
) -> None:
    before, after = STRATEGY_CASES[case]
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes(DEFAULT_ONNX.read_bytes())
    if before is not None:
        (source / "model.toml").write_text(before)
    (tmp_path / "repo").mkdir()
    final = publish.publish(tmp_path / "repo", "m", None, source=source, strategy="shadow")
    assert (final / "model.toml").read_text() == after
    manifest.verify(final)  # raises unless the manifest holds the edited file
    if before is not None:
        assert (source / "model.toml").read_text() == before  # the source is untouched


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('[rollout]\nstrategy = "canary"\n', "names strategy 'canary' already"),
        ("rollout = { bake_s = 5 }\n", "could not be edited safely"),
        ("rollout.bake_s = 5\n", "could not be edited safely"),
    ],
)
def test_publish_refuses_a_strategy_it_cannot_write_safely(
    tmp_path: Path, toml: str, said: str
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes(DEFAULT_ONNX.read_bytes())
    (source / "model.toml").write_text(toml)
    (tmp_path / "repo").mkdir()
    with pytest.raises(ConfigError, match=said):
        publish.publish(tmp_path / "repo", "m", None, source=source, strategy="shadow")
    assert not (tmp_path / "repo" / "m").exists()


def test_the_strategy_writer_says_what_it_refuses(tmp_path: Path) -> None:
    from mlapi.repository import strategies

    toml = tmp_path / "model.toml"
    with pytest.raises(
        ConfigError, match=r"strategy must be one of \['switch', 'shadow', 'canary'\]"
    ):
        strategies.write(toml, "bogus")
    toml.write_text('runtime = "onnx"')  # no newline at the end
    strategies.write(toml, "canary")
    assert toml.read_text() == 'runtime = "onnx"\n\n[rollout]\nstrategy = "canary"\n'
    toml.write_text("runtime = ")
    with pytest.raises(ConfigError, match=r"^model\.toml is not valid TOML: "):
        strategies.write(toml, "shadow")
    toml.write_bytes(b"runtime = '\xff'\n")
    with pytest.raises(ConfigError, match=r"^model.toml cannot be read \(UnicodeDecodeError\)$"):
        strategies.write(toml, "shadow")
    # a [rollout] header inside a string is not the table: the edit is checked, refused
    tricky = 'notes = """\n[rollout]\n"""\n\n[rollout]\nbake_s = 1\n'
    toml.write_text(tricky)
    with pytest.raises(ConfigError, match="could not be edited safely"):
        strategies.write(toml, "shadow")
    assert toml.read_text() == tricky
    toml.write_text('name = "é"\n', encoding="utf-8")
    strategies.write(toml, "shadow")
    assert toml.read_text(encoding="utf-8") == 'name = "é"\n\n[rollout]\nstrategy = "shadow"\n'
