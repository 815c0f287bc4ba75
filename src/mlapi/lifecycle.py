"""The server's own state that the app reads: draining after SIGTERM, and what
must stop accepting when the HTTP server does (the gRPC front)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Lifecycle:
    draining_since: float | None = None
    # Called when the HTTP server stops accepting; each returns what to wait for
    # before the process ends.
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def start_draining(self) -> bool:
        """Mark the server as draining; False if it already was."""
        if self.draining_since is not None:
            return False
        self.draining_since = time.monotonic()
        return True

    @property
    def draining(self) -> bool:
        return self.draining_since is not None
