"""The payload folder's cap, alone: what the clean-up removes and what it leaves."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mlapi.serving.payloads import _trim


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
