"""The payload log: a sampled share of the requests, with their inputs and outputs,
as JSON lines under ``MLAPI_LOG_DIR/payloads/<model>/`` (``pandas.read_json(path,
lines=True)`` reads a file). What a model is asked stays on the host.

Off the request path: a request that is sampled costs the event loop one append to
a bounded buffer; a thread of its own wakes every GATHER_S (or once WAKE_AT records
wait), turns the records into JSON, writes them and counts them into drift a batch
at a time. When it falls behind (a slow or full disk), records are dropped and
counted, never a request delayed or failed. Every worker writes files of its own (a line is never
interleaved with another worker's) and holds a shared lock on the file it writes;
each model's folder is kept under ``MLAPI_PAYLOAD_MAX_BYTES``: before a worker
starts a new file, the oldest files nobody holds go until the rest, with room for
every file another worker holds grown to its full size, fit."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlapi.observability.metrics import Metrics
from mlapi.registry import ModelVersion
from mlapi.repository.config import LoggingConfig
from mlapi.serving.drift import Monitor, save_reference
from mlapi.settings import Settings

log = logging.getLogger("mlapi.payloads")
BUFFER_RECORDS = 4096  # records waiting for the writer; more are dropped
BUFFER_BYTES = 64 << 20  # ... and no more than this of their tensors
GATHER_S = 0.05  # the writer takes what gathered this often: one wake-up per batch
WAKE_AT = 256  # ... or at once when this many records wait
RETRY_AFTER_S = 1.0  # after a failed write, the next file is tried this much later
PUBLISH_EVERY_S = 1.0  # drift gauges are set this often
DEFAULT_LOGGING = LoggingConfig()
REFERENCE_FILE = "reference.npz"
# in a file's name beside the pid: replicas sharing a logs volume each have a pid 7
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


@dataclass(slots=True)
class Record:
    time: float
    request_id: str | None
    model: str
    version: int
    client: str
    status: int
    latency_ms: float
    inputs: Mapping[str, np.ndarray] | None
    outputs: Mapping[str, np.ndarray] | None
    error: str | None
    logging: LoggingConfig
    folder: Path  # the version's, where a reference.npz may be
    size: int


class PayloadLog:
    """This worker's payload log: sampling on the loop, writing on its thread."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.default_sample = settings.payload_sample
        self.folder = settings.log_dir / "payloads" if settings.log_dir is not None else None
        workers = settings.workers
        # every worker's open file must fit beside the closed ones
        cap = settings.payload_max_bytes
        self.file_bytes = min(settings.payload_file_bytes, cap // (workers + 1))
        self.max_bytes = settings.payload_max_bytes
        self._written = metrics.payload_records
        self._dropped = metrics.payload_dropped
        self._records: deque[Record] = deque()
        self._bytes_in = 0  # the loop's
        self._bytes_out = 0  # the thread's
        self._wake = threading.Event()
        self._stopping = False
        self._files: dict[str, _File] = {}
        self._thread: threading.Thread | None = None
        self._drift: dict[tuple[str, int], _Drift] = {}
        self._psi = metrics.drift_psi
        self._published = 0.0

    def sample(self, model: ModelVersion) -> float:
        config = model.config
        own = config.logging.sample if config is not None else None
        return self.default_sample if own is None else own

    # ----- on the event loop ------------------------------------------------------
    def offer(
        self,
        model: ModelVersion,
        request_id: str | None,
        client: str,
        status: int,
        seconds: float,
        inputs: Mapping[str, np.ndarray] | None,
        outputs: Mapping[str, np.ndarray] | None,
        error: str | None = None,
    ) -> None:
        """Keep a record of this request if it is sampled (the caller checked that the
        model's share is over 0): dropped and counted when the buffer is full."""
        if self.folder is None or random.random() >= self.sample(model):
            return
        size = _nbytes(inputs) + _nbytes(outputs)
        if (
            len(self._records) >= BUFFER_RECORDS
            or self._bytes_in - self._bytes_out + size > BUFFER_BYTES
        ):
            self._dropped.labels(model.name, "buffer").inc()
            return
        config = model.config
        self._bytes_in += size
        self._records.append(
            Record(
                time.time(),
                request_id,
                model.name,
                model.version,
                client,
                status,
                round(seconds * 1000, 3),
                inputs,
                outputs,
                error,
                config.logging if config is not None else DEFAULT_LOGGING,
                model.path,
                size,
            )
        )
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="payload-log", daemon=True)
            self._thread.start()
        if len(self._records) >= WAKE_AT:
            self._wake.set()

    def close(self, within_s: float = 5.0) -> None:
        """Write what waits (at most ``within_s``), then close the files."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(within_s)
        for file in self._files.values():
            file.close()
        self._files.clear()

    # ----- on the writer's thread ---------------------------------------------------
    def _work(self) -> None:
        while True:
            self._wake.wait(GATHER_S)
            self._wake.clear()
            while self._records:
                batch: dict[tuple[str, int], list[Record]] = {}
                for _ in range(len(self._records)):
                    record = self._records.popleft()
                    self._bytes_out += record.size
                    self._write(record)
                    if record.logging.drift and record.status == 200 and record.inputs:
                        batch.setdefault((record.model, record.version), []).append(record)
                for key, records in batch.items():
                    self._observe(key, records)
            if time.monotonic() - self._published >= PUBLISH_EVERY_S:
                self._publish()
            if self._stopping:
                return

    # ----- drift (serving/drift.py), on the writer's thread ---------------------------
    def _observe(self, key: tuple[str, int], records: list[Record]) -> None:
        """Count a version's requests into its drift window, a batch at a time; or,
        while it has no reference yet, keep them toward one (the first
        reference_requests)."""
        first = records[0]
        drift = self._drift.get(key)
        if drift is None:
            drift = self._drift[key] = self._drift_of(first)
        if drift.monitor is None:
            config = first.logging
            wanted = max(0, config.reference_requests - len(drift.inputs))
            for record in records[:wanted]:
                drift.inputs.append(dict(record.inputs or {}))
                drift.outputs.append(dict(record.outputs or {}))
            records = records[wanted:]
            if len(drift.inputs) < config.reference_requests:
                return
            inputs, outputs = _stacked(drift.inputs), _stacked(drift.outputs)
            drift.inputs, drift.outputs = [], []
            self._save_reference(first, inputs, outputs)
            drift.monitor = Monitor(inputs, outputs, config.max_features, config.drift_window)
        if records:
            drift.monitor.add_requests(
                [r.inputs or {} for r in records], [r.outputs for r in records]
            )

    def _drift_of(self, record: Record) -> _Drift:
        """A version's reference: its own reference.npz, else one this server saved
        from its first live requests, else none yet."""
        for path in (record.folder / REFERENCE_FILE, self._reference_path(record)):
            if path is None or not path.is_file():
                continue
            try:
                with np.load(path, allow_pickle=False) as saved:
                    arrays = {name: saved[name] for name in saved.files}
            except (OSError, ValueError) as exc:
                log.warning("drift reference %s not read: %s", path.name, type(exc).__name__)
                continue
            outputs = {
                name.removeprefix("output:"): a
                for name, a in arrays.items()
                if name.startswith("output:") or name in (record.outputs or {})
            }
            inputs = {n: a for n, a in arrays.items() if n.removeprefix("output:") not in outputs}
            if inputs:
                config = record.logging
                monitor = Monitor(inputs, outputs or None, config.max_features, config.drift_window)
                return _Drift(monitor)
        return _Drift(None)

    def _reference_path(self, record: Record) -> Path | None:
        if self.folder is None:
            return None
        return self.folder.parent / "drift" / f"{record.model}-v{record.version}.reference.npz"

    def _save_reference(
        self, record: Record, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        """Kept, so that a restart compares with the same reference."""
        path = self._reference_path(record)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_reference(path, inputs, outputs)
        except (OSError, ValueError) as exc:
            log.warning("drift reference of %s not saved: %s", record.model, type(exc).__name__)

    def _publish(self) -> None:
        self._published = time.monotonic()
        for (model, version), drift in list(self._drift.items()):
            if drift.monitor is None:
                continue
            for feature, value in drift.monitor.psi().items():
                self._psi.labels(model, str(version), feature).set(value)

    def _write(self, record: Record) -> None:
        assert self.folder is not None
        line = orjson.dumps(_document(record), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        file = self._files.get(record.model)
        now = time.monotonic()
        if file is not None and (file.failed_at or file.size + len(line) > self.file_bytes):
            if file.failed_at and now - file.failed_at < RETRY_AFTER_S:
                self._dropped.labels(record.model, "disk").inc()
                return
            file.close()
            file = None
        try:
            if file is None:
                file = self._files[record.model] = self._open(record.model)
            file.write(line)
        except OSError as exc:
            if file is not None:
                file.failed_at = now
            self._dropped.labels(record.model, "disk").inc()
            log.warning("payload record of %s not written: %s", record.model, type(exc).__name__)
            return
        self._written.labels(record.model).inc()

    def _open(self, model: str) -> _File:
        assert self.folder is not None
        for reason in ("buffer", "disk"):  # each model's drop series from 0
            self._dropped.labels(model, reason)
        folder = self.folder / model
        folder.mkdir(parents=True, exist_ok=True)
        _trim(folder, self.max_bytes, self.file_bytes)
        now = time.time_ns()  # names sort by age: the clean-up removes the first ones
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
        name = f"{stamp}.{now // 1000 % 10**6:06d}Z-{_HOST}-{os.getpid()}.jsonl"
        return _File(folder / name)


class _Drift:
    def __init__(self, monitor: Monitor | None) -> None:
        self.monitor = monitor
        self.inputs: list[dict[str, np.ndarray]] = []  # toward a reference, until it has one
        self.outputs: list[dict[str, np.ndarray]] = []


def _stacked(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each tensor's rows of all the requests (a tensor whose shapes differ: left out)."""
    stacked: dict[str, np.ndarray] = {}
    for name in requests[0] if requests else ():
        try:
            stacked[name] = np.concatenate([r[name] for r in requests if name in r])
        except ValueError:
            continue
    return stacked


class _File:
    """A payload file this worker writes, held with a shared lock (so another
    worker's clean-up leaves it alone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        self.size = 0
        self.failed_at = 0.0

    def write(self, data: bytes) -> None:
        written = os.write(self.fd, data)
        self.size += written
        if written != len(data):
            raise OSError("short write")

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _trim(folder: Path, cap: int, file_bytes: int) -> None:
    """Remove the oldest payload files nobody holds until the folder fits ``cap`` with
    a new file of ``file_bytes`` and every held file grown to ``file_bytes`` (held:
    another worker, of this replica or of another on the same volume, writes it)."""
    files = []
    for path in folder.glob("*.jsonl"):
        with contextlib.suppress(OSError):
            files.append((path.name, path, path.stat().st_size))
    files.sort()
    free = [(path, size) for _, path, size in files if _free(path)]
    held = len(files) - len(free)
    total = sum(size for _, size in free) + (held + 1) * file_bytes
    for path, size in free:
        if total <= cap:
            return
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size


def _free(path: Path) -> bool:
    """Whether no worker holds ``path`` (it was closed, or its worker is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _document(record: Record) -> dict[str, Any]:
    document: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.time))
        + f".{int(record.time % 1 * 1000):03d}Z",
        "request_id": record.request_id,
        "model": record.model,
        "version": record.version,
        "client": record.client,
        "status": record.status,
        "latency_ms": record.latency_ms,
    }
    if record.inputs is not None:
        document["inputs"] = {
            name: _tensor(array, record.logging.max_elements, name in record.logging.redact)
            for name, array in record.inputs.items()
        }
    if record.outputs is not None:
        document["outputs"] = {
            name: _tensor(array, record.logging.max_elements, False)
            for name, array in record.outputs.items()
        }
    if record.error is not None:
        document["error"] = record.error
    return document


def _tensor(array: np.ndarray, max_elements: int, redacted: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {"shape": list(array.shape)}
    if redacted:
        shown["sha256"] = _digest(array)
        return shown
    flat = array.reshape(-1)
    if flat.size > max_elements:
        shown["truncated"] = True
    values = flat[:max_elements].tolist()
    shown["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in values]
    return shown


def _digest(array: np.ndarray) -> str:
    """A hash of a tensor's values (its text for BYTES): equal inputs, equal hashes."""
    digest = hashlib.sha256()
    if array.dtype.kind == "O":
        for value in array.reshape(-1).tolist():
            item = value if isinstance(value, bytes) else str(value).encode()
            digest.update(len(item).to_bytes(8, "little") + item)
    else:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _nbytes(tensors: Mapping[str, np.ndarray] | None) -> int:
    return sum(array.nbytes for array in tensors.values()) if tensors else 0
