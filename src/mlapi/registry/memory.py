"""Whether a model version fits in memory before it loads, so that an update never
gets the container OOM-killed (which would drop every request in flight).

What a version needs: its ``memory_mb`` in model.toml when given, else what the
same files took at the peak of their last load here (kept in MLAPI_CACHE_DIR), else
an estimate from its files: an ONNX graph three times its size (the file read, the
tensors made from it, onnxruntime's packed copy), sixteen times when it holds tree
ensembles (onnxruntime's nodes are far larger than their encoding), any other
file twice. What is left: the limit (MLAPI_MEMORY_LIMIT, else the
container's cgroup limit, v2 or v1, else the host's memory) less what is in use
(against MLAPI_MEMORY_LIMIT, this process's resident memory times WORKERS; against
a cgroup limit, the cgroup's memory without reclaimable page cache; on a bare host,
what the kernel says is not available) less a headroom. Each worker loads its own copy,
so a version needs its size times WORKERS.

An on-demand model is loaded by one worker at a time, into that worker's cache: it
is checked against the worker's share, (limit - headroom) / WORKERS, less the
worker's own resident memory and what its other loads in progress will take (and,
under a container's limit, against what the whole container has left too). An equal
split needs no talk between workers and keeps their sum under the limit whatever
each one caches; the kernel spreads connections over the workers, so their hot sets
are alike and the split wastes little."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import re
import threading
from pathlib import Path

import orjson

from mlapi.errors import InsufficientMemory
from mlapi.repository import manifest
from mlapi.repository.config import ModelConfig

log = logging.getLogger("mlapi.registry")
MIB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
_UNLIMITED = 1 << 60
_MEASURED_FILE = "memory.json"


def resident_bytes() -> int:
    """This process's resident memory."""
    return _resident_of("self")


def _resident_of(pid: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+)\s+kB", status)
        return int(match.group(1)) * 1024 if match else 0
    except OSError:
        return 0


def parent_resident_bytes() -> int:
    """The resident memory of this process's parent: with WORKERS > 1, the
    supervisor, which the container's limit holds besides the workers."""
    return _resident_of(str(os.getppid()))


def cgroup_limit(root: Path = CGROUP) -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``); None when there is none."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED:
            return None
        return int(text)
    return None


def cgroup_used(root: Path = CGROUP) -> int | None:
    """Memory in use in this cgroup, less the page cache the kernel can drop."""
    for current, stat, inactive in (
        ("memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        try:
            used = int((root / current).read_text())
            stats = dict(
                line.split() for line in (root / stat).read_text().splitlines() if " " in line
            )
        except (OSError, ValueError):
            continue
        return max(0, used - int(stats.get(inactive, 0)))
    return None


def cgroup_held(root: Path = CGROUP) -> int | None:
    """Memory this cgroup holds that the kernel cannot reclaim without swap: anonymous
    pages and shared memory (tmpfs), v2 (``anon``, ``shmem``) or v1 (``total_rss``,
    ``total_shmem``). Page cache, active or not, is left out: the files of models
    read a moment ago fill it, and the kernel drops it before it kills anything."""
    for stat, fields in (
        ("memory.stat", ("anon", "shmem")),
        ("memory/memory.stat", ("total_rss", "total_shmem")),
    ):
        try:
            stats = dict(
                line.split() for line in (root / stat).read_text().splitlines() if " " in line
            )
        except (OSError, ValueError):
            continue
        if fields[0] in stats:
            return sum(int(stats.get(name, 0)) for name in fields)
    return None


def host_memory(meminfo: Path = MEMINFO) -> tuple[int, int]:
    """(total, in use) of the host: MemTotal, and MemTotal less MemAvailable."""
    fields = {}
    for line in meminfo.read_text().splitlines():
        name, _, rest = line.partition(":")  # pragma: no mutate (one ':' a line)
        fields[name] = int(rest.split()[0]) * 1024
    total = fields.get("MemTotal", 0)
    return total, total - fields.get("MemAvailable", total)


class MemoryBudget:
    def __init__(
        self,
        limit: int | None,
        workers: int,
        cache_dir: Path | None,
        cgroup: Path = CGROUP,
        meminfo: Path = MEMINFO,
    ) -> None:
        self._override = limit
        self._workers = workers
        self._cgroup, self._meminfo = cgroup, meminfo
        self._measured_path = cache_dir / _MEASURED_FILE if cache_dir else None
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # measured by this process (with no cache dir too)
        self._estimates: dict[str, int] = {}  # by fingerprint: a file is read once

    def limit_and_used(self) -> tuple[int, int]:
        """(limit, in use). MLAPI_MEMORY_LIMIT is a budget for this server alone, so
        it is set against this server's own memory; a container's limit against
        everything in the container."""
        if self._override is not None:
            return self._override, resident_bytes() * self._workers
        container = cgroup_limit(self._cgroup)
        if container is not None:
            return container, cgroup_used(self._cgroup) or resident_bytes() * self._workers
        return host_memory(self._meminfo)

    def need(self, folder: Path, config: ModelConfig, fingerprint: str) -> tuple[int, str]:
        """(bytes one copy needs, where that figure comes from)."""
        if config.memory_mb is not None:
            return int(config.memory_mb * MIB), "memory_mb in model.toml"
        files = manifest.files_of(folder)
        size = sum(path.stat().st_size for path in files)
        measured = self.known(fingerprint)
        if measured:
            # A load can reuse memory the allocator kept from an earlier one, so its
            # growth may read low; a model holds at least what its files hold.
            return max(measured, size), "measured at its last load"
        return self.estimate(folder, fingerprint, files), "estimated from its files"

    def estimate(self, folder: Path, fingerprint: str, files: list[Path] | None = None) -> int:
        """What loading the version's files takes at its peak, by what they hold."""
        estimate = self._estimates.get(fingerprint) if fingerprint else None
        if estimate is None:
            found = manifest.files_of(folder) if files is None else files
            estimate = max(sum(_estimate(path) for path in found), MIB)
            if fingerprint:
                self._estimates[fingerprint] = estimate
        return estimate

    def check(self, folder: Path, config: ModelConfig, fingerprint: str) -> None:
        """InsufficientMemory, with the numbers, when the version does not fit."""
        one, source = self.need(folder, config, fingerprint)
        needed = one * self._workers
        limit, used = self.limit_and_used()
        headroom = headroom_of(limit)
        left = limit - used - headroom
        if needed > left:
            per_worker = f" ({self._workers} workers x {_mib(one)})" if self._workers > 1 else ""
            raise InsufficientMemory(
                f"needs about {_mib(needed)}{per_worker}, from {source}; {_mib(max(left, 0))} "
                f"is left under the memory limit of {_mib(limit)} ({_mib(used)} in use, "
                f"{_mib(headroom)} kept free). Raise the limit (MLAPI_MEMORY_LIMIT or the "
                f"container's) or unload a model"
            )

    def limit(self) -> int:
        """MLAPI_MEMORY_LIMIT, else the container's, else the host's memory."""
        if self._override is not None:
            return self._override
        return cgroup_limit(self._cgroup) or host_memory(self._meminfo)[0]

    def worker_share(self, limit: int) -> int:
        """A worker's share of ``limit``: less the headroom and, with WORKERS > 1, the
        supervisor's memory, split evenly."""
        supervisor = parent_resident_bytes() if self._workers > 1 else 0
        return (limit - headroom_of(limit) - supervisor) // self._workers

    def share(self) -> tuple[int, int]:
        """(this worker's share of the limit, the bytes it has left in it now)."""
        share = self.worker_share(self.limit())
        return share, share - resident_bytes()

    def check_share(
        self, folder: Path, config: ModelConfig, fingerprint: str, reserved: int = 0
    ) -> None:
        """InsufficientMemory, with the numbers, when an on-demand version does not fit
        in this worker's share (less ``reserved``: other loads under way here)."""
        one, source = self.need(folder, config, fingerprint)
        limit = self.limit()
        headroom = headroom_of(limit)
        share = self.worker_share(limit)
        left = share - resident_bytes() - reserved
        if one > left:
            supervisor = " and the supervisor's memory" if self._workers > 1 else ""
            raise InsufficientMemory(
                f"needs about {_mib(one)}, from {source}; {_mib(max(left, 0))} is left of "
                f"this worker's share of the memory limit ({_mib(share)}: the limit of "
                f"{_mib(limit)} less {_mib(headroom)} kept free{supervisor}, over "
                f"{self._workers} worker(s)) with every idle model that may go evicted. "
                f"Raise the limit (MLAPI_MEMORY_LIMIT or the container's) or lower WORKERS"
            )
        held = cgroup_held(self._cgroup) if self._override is None else None
        if held is not None and cgroup_limit(self._cgroup) is not None:
            # the container as a whole (other processes, tmpfs), page cache left out
            container_left = limit - held - headroom - reserved
            if one > container_left:
                raise InsufficientMemory(
                    f"needs about {_mib(one)}, from {source}; {_mib(max(container_left, 0))} "
                    f"is left under the memory limit of {_mib(limit)} ({_mib(held)} held "
                    f"in the container, {_mib(headroom)} kept free)"
                )

    def fits_share(self, need: int, reserved: int = 0) -> bool:
        """Whether ``need`` more bytes fit in this worker's share now."""
        return need <= self.share()[1] - reserved

    def known(self, fingerprint: str) -> int:
        """What the same files measured before (0: nothing known)."""
        measured = self._seen.get(fingerprint) or self._measured().get(fingerprint)
        return measured if isinstance(measured, int) and measured > 0 else 0

    def remember(self, fingerprint: str, measured: int) -> None:
        """What one copy took when it loaded (resident memory before and after)."""
        if not fingerprint or measured <= 0:
            return
        self._seen[fingerprint] = measured
        if self._measured_path is None:
            return
        with self._lock:
            known = self._measured()
            known[fingerprint] = measured
            try:
                tmp = self._measured_path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(orjson.dumps(dict(list(known.items())[-500:])))
                tmp.replace(self._measured_path)
            except OSError as exc:
                log.debug("memory measurements not kept: %s", type(exc).__name__)

    def _measured(self) -> dict[str, object]:
        if self._measured_path is None:
            return {}
        try:
            known = orjson.loads(self._measured_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return known if isinstance(known, dict) else {}


_TREES = b"TreeEnsemble"  # the op types TreeEnsembleClassifier, -Regressor and TreeEnsemble


def _estimate(path: Path) -> int:
    """What loading one file takes at its peak, before it was ever measured."""
    size = path.stat().st_size
    if path.suffix != ".onnx":
        return 2 * size
    try:
        with path.open("rb") as handle:
            tail = b""
            while chunk := handle.read(1 << 20):
                if _TREES in tail + chunk:
                    return 16 * size
                tail = chunk[-len(_TREES) :]
    except OSError:
        pass
    return 3 * size


def headroom_of(limit: int) -> int:
    """What is kept free under a limit: 5% of it, at least 64 MiB."""
    return max(64 * MIB, limit // 20)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def give_back_freed() -> None:
    """After an unload: collect the model's cycles and hand the heap's free pages
    back to the kernel (glibc's malloc_trim), so that resident memory, which the
    budget reads, falls by what the model held. Elsewhere than glibc, a no-op."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _mib(size: int) -> str:
    return f"{size / MIB:,.0f} MiB"
