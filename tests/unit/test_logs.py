from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from mlapi import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_go_to_the_log_folder(tmp_path: Path) -> None:
    logs.configure("info", json_format=True, log_dir=tmp_path)
    logging.getLogger("mlapi.test").info("hello %s", "there", extra={"model": "iris"})
    for handler in logging.getLogger().handlers:
        handler.flush()
    line = orjson.loads((tmp_path / "mlapi.log").read_text().splitlines()[-1])
    assert line["message"] == "hello there" and line["model"] == "iris" and line["level"] == "info"


def test_a_log_folder_that_cannot_be_written_is_counted_not_fatal(tmp_path: Path) -> None:
    before = logs.WriteErrors.count
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    logs.configure("info", json_format=False, log_dir=not_a_folder)
    logging.getLogger("mlapi.test").info("still fine")
    assert logs.WriteErrors.count == before + 1


def test_write_failures_after_start_are_counted(tmp_path: Path) -> None:
    logs.configure("info", json_format=False, log_dir=tmp_path)
    (handler,) = [
        h for h in logging.getLogger().handlers if isinstance(h, logs.SafeRotatingFileHandler)
    ]
    assert handler.stream is not None
    handler.stream.close()  # what a vanished or full volume looks like to the handler
    before = logs.WriteErrors.count
    logging.getLogger("mlapi.test").error("cannot be written")
    assert logs.WriteErrors.count == before + 1
