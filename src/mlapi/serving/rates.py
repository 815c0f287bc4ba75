"""Each client's rate (``rate`` and ``burst`` in API_KEYS_FILE): a token bucket per
client that fills at ``rate`` tokens a second up to ``burst``; a request takes one,
and with none left it is refused (429, Retry-After: when one will be there).

The buckets are shared by every worker of a server: a client is held to its rate
whichever worker its connections land on. With WORKERS > 1 they live in a file of
the workers' shared folder (the one their metrics use), mapped into each worker and
locked for the few microseconds of an update; with one worker, in its memory. A
slot per client, found from a hash of its name; the clock is the system's monotonic
one, the same in every process."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from mlapi.errors import RateLimited
from mlapi.serving.keys import MAX_KEYS, Client

SLOTS = 2 * MAX_KEYS  # at most half full: a client's slot is found in a probe or two
_RECORD = struct.Struct("<ddQ")  # tokens, last refill (monotonic s), owner (0: free)
IDLE_S = 86_400.0  # a slot unused this long is free again (its client may be gone)
SIZE = SLOTS * _RECORD.size
FILE_NAME = "mlapi-rates.bin"


def _owner(name: str) -> int:
    """A client's mark in its slot: 64 bits of its name's hash, never 0."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") or 1


class Buckets:
    def __init__(self, path: Path | None = None) -> None:
        self._fd: int | None = None
        if path is None:
            self._map = mmap.mmap(-1, SIZE)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < SIZE:
                    os.ftruncate(fd, SIZE)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def for_workers(cls) -> Buckets:
        """Shared through the workers' folder when there is one, else private."""
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return cls(Path(folder) / FILE_NAME if folder else None)

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def check(self, client: Client) -> None:
        """RateLimited when the client has no token left."""
        wait = self.take(client)
        if wait > 0:
            raise RateLimited(
                f"key '{client.name}' is over its rate of {client.rate:g} requests a second "
                f"(burst {client.burst}); retry in {wait:.2f} s",
                retry_after_s=max(1, math.ceil(wait)),
            )

    def take(self, client: Client, now: float | None = None) -> float:
        """0.0 when the request may go (a token taken); else the seconds until a token
        will be there. A client with no rate always goes."""
        rate = client.rate
        if rate is None:
            return 0.0
        now = time.monotonic() if now is None else now
        owner = _owner(client.name)
        with self._locked():
            offset = self._slot(owner, now)
            if offset is None:  # every slot taken (cannot happen under MAX_KEYS)
                return 0.0
            tokens, stamp, held = _RECORD.unpack_from(self._map, offset)
            if held != owner:  # a fresh slot: a full bucket
                tokens, stamp = float(client.burst), now
            tokens = min(float(client.burst), tokens + max(0.0, now - stamp) * rate)
            wait = 0.0
            if tokens >= 1.0 - 1e-9:  # a token that came back to the last rounding
                tokens = max(0.0, tokens - 1.0)
            else:
                wait = (1.0 - tokens) / rate
            _RECORD.pack_into(self._map, offset, tokens, now, owner)
        return wait

    def _slot(self, owner: int, now: float) -> int | None:
        """The client's slot: its own, else the first free or idle one from its hash."""
        start = owner % SLOTS
        for probe in range(SLOTS):
            offset = ((start + probe) % SLOTS) * _RECORD.size
            _, stamp, held = _RECORD.unpack_from(self._map, offset)
            if held in (owner, 0) or now - stamp > IDLE_S:
                return offset
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd is None:  # one process, one event loop: nothing runs in between
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
