"""The payload log's parts alone: the folder's cap, the references it reads (never
unpickled) and fills, the buffer's accounting, the redaction hash."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlapi.observability.metrics import Metrics
from mlapi.registry import ModelVersion
from mlapi.repository.config import LoggingConfig
from mlapi.serving.payloads import PayloadLog, Record, _digest, _trim
from tests.conftest import make_settings


def _file(folder: Path, name: str, size: int) -> Path:
    path = folder / f"{name}.jsonl"
    path.write_bytes(b"x" * size)
    return path


def test_the_oldest_free_files_go_and_held_ones_count_at_full_size(tmp_path: Path) -> None:
    _, held, _, new = (
        _file(tmp_path, name, 100)
        for name in (
            "20261206T080000.000000Z-a-1",
            "20261206T080001.000000Z-b-2",
            "20261206T080002.000000Z-a-1",
            "20261206T080003.000000Z-a-1",
        )
    )
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # another worker writes it (and may grow it to 400)
    try:
        # free 300 + held 400 + the new file 400 = 1100: the two oldest free ones go
        _trim(tmp_path, cap=900, file_bytes=400)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([held.name, new.name])
        _trim(tmp_path, cap=900, file_bytes=400)  # fits now: nothing more goes
        assert held.exists() and new.exists()
        _trim(tmp_path, cap=100, file_bytes=400)  # cannot fit: still, a held file stays
        assert held.exists() and not new.exists()
    finally:
        os.close(fd)


_UNPICKLED: list[str] = []


def _unpickled() -> str:
    _UNPICKLED.append("a reference unpickled")
    return "x"


class _Trap:
    """An object that records its unpickling."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _unpickled, ()


def _log(tmp_path: Path) -> PayloadLog:
    settings = make_settings(tmp_path / "repo", MLAPI_LOG_DIR=str(tmp_path / "logs"))
    return PayloadLog(settings, Metrics())


def _record(folder: Path, value: float, status: int = 200, **logging: Any) -> Record:
    inputs = {"x": np.full((1, 2), value)}
    outputs = {"label": np.array(["a" if value < 0 else "b"], object)}
    config = LoggingConfig(**logging)
    return Record(
        time.time(), None, "m", 1, "", status, 1.0, inputs, outputs, None, config, folder, 16
    )


def test_a_reference_is_never_unpickled(tmp_path: Path) -> None:
    """A reference.npz that holds a pickled object array is left unread (and logged),
    never unpickled: the server takes no pickle, from a model folder or the logs."""
    folder = tmp_path / "version"
    folder.mkdir()
    trap = np.empty(1, object)
    trap[0] = _Trap()
    np.savez(folder / "reference.npz", x=trap)
    drift = _log(tmp_path)._drift_of(_record(folder, 0.0))
    assert drift.monitor is None and _UNPICKLED == []


def test_a_reference_names_its_outputs_either_way(tmp_path: Path) -> None:
    """Outputs as ``output:<name>`` or by the name the model answers with."""
    rng = np.random.default_rng(0)
    for name in ("output:label", "label"):
        folder = tmp_path / name
        folder.mkdir()
        arrays = {"x": rng.normal(size=(100, 2)), name: np.array(["a", "b"] * 50)}
        np.savez(folder / "reference.npz", **arrays)  # type: ignore[arg-type]
        monitor = _log(tmp_path)._drift_of(_record(folder, 0.0)).monitor
        assert monitor is not None
        assert [f.name for f in monitor.features] == ["x[0]", "x[1]", "output:label"]


def test_the_batch_that_completes_the_reference_counts_its_rest(tmp_path: Path) -> None:
    """The first reference_requests become the reference; the rest of that batch is
    counted as live at once; refused requests count toward neither."""
    log = _log(tmp_path)
    folder = tmp_path / "version"  # no reference.npz
    records = [_record(folder, float(v), reference_requests=5) for v in range(-4, 4)]
    log._observe(("m", 1), records)
    drift = log._drift[("m", 1)]
    assert drift.monitor is not None and drift.monitor._requests == 3
    assert (tmp_path / "logs" / "drift" / "m-v1.reference.npz").is_file()
    refused = _record(folder, 0.0, status=400, reference_requests=5)
    log._records.extend([refused] * 4 + [_record(folder, 0.0, reference_requests=5)])
    log._stopping = True
    log._work()  # the writer's loop, here: takes what waits, then stops
    assert drift.monitor._requests == 4 and not log._records
    assert log._written.labels("m")._value.get() == 5  # every one written to the file


def test_the_buffer_frees_what_the_writer_took(tmp_path: Path) -> None:
    """The buffer's byte count falls as the writer takes records: 200 records of 1 MiB
    each pass through a 64 MiB buffer, none dropped."""
    log = _log(tmp_path)
    version = ModelVersion("m", 1, tmp_path, None)
    big = {"x": np.zeros((1, 1 << 17))}  # 1 MiB of float64
    log.default_sample = 1.0
    for _ in range(200):
        log.offer(version, None, "", 200, 0.001, big, None)
        deadline = time.monotonic() + 10
        while len(log._records) > 8 and time.monotonic() < deadline:
            time.sleep(0.005)
    log.close()
    dropped = log._dropped.labels("m", "buffer")._value.get()
    assert dropped == 0 and log._written.labels("m")._value.get() == 200


def test_a_bytes_tensor_hashes_its_values_length_prefixed() -> None:
    """The documented redaction: SHA-256 over each value's length (8 bytes, little
    endian) and bytes, so ["ab", "c"] and ["a", "bc"] differ; numbers over their bytes."""
    texts = np.array([b"ab", "c"], object)
    expected = hashlib.sha256(
        (2).to_bytes(8, "little") + b"ab" + (1).to_bytes(8, "little") + b"c"
    ).hexdigest()
    assert _digest(texts) == expected
    assert _digest(np.array([b"a", b"bc"], object)) != expected
    numbers = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _digest(numbers) == hashlib.sha256(numbers.tobytes()).hexdigest()
    assert _digest(numbers.T) == hashlib.sha256(numbers.T.copy().tobytes()).hexdigest()
