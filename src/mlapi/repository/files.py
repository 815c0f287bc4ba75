"""Reading the repository's small files (model.toml, manifest.json, rollback marks)
as someone who shares the volume could have left them: only a regular file is
read, opened so that a FIFO cannot block the reader (O_NONBLOCK, then its type
checked on the open descriptor), and never more than a cap (a link to /dev/zero
would otherwise be read until memory runs out)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

CONFIG_MAX_BYTES = 1 << 20  # model.toml
MANIFEST_MAX_BYTES = 16 << 20  # manifest.json: 10,000 files take about 1 MB
MARK_MAX_BYTES = 64 << 10  # .rolled-back-<version>


class NotReadable(OSError):
    """A repository file that is not a regular file, or is over its cap; its text
    says which ("is not a regular file"), for the caller to put after the name."""


def read_capped(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (links followed). FileNotFoundError
    when there is none; NotReadable, naming why, for a FIFO, device, socket or
    folder, or a file over ``max_bytes``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotReadable("is not a regular file")
        if info.st_size > max_bytes:
            raise NotReadable(f"is over {max_bytes:,} bytes")
        chunks = []
        left = max_bytes + 1  # a file that grows while it is read is caught too
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise NotReadable(f"is over {max_bytes:,} bytes")
    return b"".join(chunks)
