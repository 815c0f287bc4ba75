"""The repository's rollback marks alone (repository/rollback.py): a mark keeps its
version out of the choice while the version's files are as they were, and goes
stale, by itself, the moment they change (a fixed version published again under
the same number is served; issue 22's review: a mark that never goes stale
survived the tests)."""

from __future__ import annotations

import os
from pathlib import Path

from mlapi.repository import rollback


def _version(model_dir: Path, number: int) -> Path:
    folder = model_dir / str(number)
    folder.mkdir(parents=True)
    (folder / "model.py").write_text("x = 1\n")
    return folder


def test_a_mark_holds_while_the_files_are_unchanged_and_goes_stale_when_they_change(
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "m"
    folder = _version(model_dir, 2)
    _version(model_dir, 1)
    assert rollback.rolled_back(model_dir) == {}
    rollback.mark(model_dir, 2, "5xx in its bake: 4 of 10 requests")
    assert rollback.rolled_back(model_dir) == {2: "5xx in its bake: 4 of 10 requests"}
    assert [p.name for p in model_dir.iterdir() if p.name.endswith(".tmp")] == []
    (folder / "model.py").write_text("x = 2  # fixed\n")
    assert rollback.rolled_back(model_dir) == {}  # stale: the new files are served again
    rollback.mark(model_dir, 2, "again")
    assert rollback.rolled_back(model_dir) == {2: "again"}
    (folder / "weights.bin").write_bytes(b"1")  # a file added is a change too
    assert rollback.rolled_back(model_dir) == {}


def test_marks_that_are_not_marks_are_ignored(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    _version(model_dir, 3)
    rollback.mark(model_dir, 3, "why")
    (model_dir / ".rolled-back-x").write_text('{"reason": "r", "fingerprint": ""}')
    (model_dir / ".rolled-back-\u00b2").write_text('{"reason": "r", "fingerprint": ""}')
    (model_dir / ".rolled-back-4").write_text("not json")
    (model_dir / ".rolled-back-5").write_text('{"reason": "no fingerprint"}')
    (model_dir / ".rolled-back-6").write_text("[1, 2]")
    os.mkfifo(model_dir / ".rolled-back-7")
    assert rollback.rolled_back(model_dir) == {3: "why"}
    assert rollback.rolled_back(tmp_path / "no such model") == {}
