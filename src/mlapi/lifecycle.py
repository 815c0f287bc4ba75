"""The server's own state that the app reads: draining after SIGTERM."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Lifecycle:
    draining_since: float | None = None

    def start_draining(self) -> bool:
        """Mark the server as draining; False if it already was."""
        if self.draining_since is not None:
            return False
        self.draining_since = time.monotonic()
        return True

    @property
    def draining(self) -> bool:
        return self.draining_since is not None
