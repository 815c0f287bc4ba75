"""What one HTTP connection may take before it is closed, enforced where the bytes
arrive (uvicorn's httptools protocol), so a slow or idle client never reaches the
app holding a request slot:

- the request line and headers must arrive within ``header_timeout_s`` of the
  connection opening (or of the request's first byte on a kept-alive connection),
  and add up to at most ``max_header_bytes`` while they are read, not after;
- the body must arrive within ``body_timeout_s`` of the headers;
- an idle kept-alive connection closes after ``keepalive_timeout_s`` (uvicorn's own
  timer), and a worker answers 503 past ``max_connections`` (uvicorn's limit).

A request that runs out of time gets 408, one over the header limit 431, each with
the protocol's JSON error body and ``Connection: close``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mlapi.api.body import BODY_TIMED_OUT


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class, with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """The deadlines are timestamps, checked by one sweep per worker every fraction
    of a second, rather than a timer armed and cancelled per request: on the hot
    path a request costs three clock reads, not two timer handles."""

    limits: ConnectionLimits
    _sweep: asyncio.TimerHandle | None = None  # this worker's sweep, while it has connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline_at: float | None = None  # monotonic loop time; None: no deadline
        self._in_headers = True  # reading a request line and headers
        self._header_bytes = 0  # bytes fed while no request's headers were complete
        self._body_pending = False  # between the end of the headers and of the body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline_at = self.loop.time() + self.limits.header_timeout_s
        cls = type(self)
        if cls._sweep is None:
            cls._sweep = self.loop.call_later(self._sweep_every(), self._sweep_all)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            # Only chunks read wholly before the headers ended count: what the parser
            # buffers is at most the limit plus one read.
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431,
                    f"request headers are over {self.limits.max_header_bytes} bytes "
                    f"(MLAPI_MAX_HEADER_BYTES)",
                )

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read: the protocol's JSON error body, too."""
        self._refuse(400, f"malformed HTTP request: {msg}")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._in_headers = True
            self._header_bytes = 0
            self._deadline_at = self.loop.time() + self.limits.header_timeout_s

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._body_pending = True
        self._deadline_at = self.loop.time() + self.limits.body_timeout_s
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:  # the request's cycle
            self.cycle.transport = _OneSend(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._deadline_at = None
        super().on_message_complete()

    # ----- deadlines -------------------------------------------------------------
    def _sweep_every(self) -> float:
        shortest = min(self.limits.header_timeout_s, self.limits.body_timeout_s)
        return min(1.0, max(0.05, shortest / 8))

    def _sweep_all(self) -> None:
        """Every connection of this worker whose deadline has passed is answered."""
        cls = type(self)
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                due = connection._deadline_at
                if due is not None and now >= due:
                    connection._deadline_at = None
                    connection._expire()
        cls._sweep = (
            self.loop.call_later(self._sweep_every(), self._sweep_all) if self.connections else None
        )

    def _expire(self) -> None:
        if self._in_headers:
            self._headers_too_slow()
        elif self._body_pending:
            self._body_too_slow()

    def _headers_too_slow(self) -> None:
        if not self._in_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0:
            self.transport.close()  # nothing of a request came: nobody to answer
            return
        self._refuse(
            408,
            f"request headers did not arrive within {self.limits.header_timeout_s:g}s "
            f"(MLAPI_HEADER_TIMEOUT_S)",
        )

    def _body_too_slow(self) -> None:
        if not self._body_pending or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle.response_started:  # the app answered without the whole body: just close
            cycle.disconnected = not cycle.response_complete
            self.transport.close()
            return
        # The app task waiting for the body sees the client gone and sends nothing.
        cycle.scope[BODY_TIMED_OUT] = True  # type: ignore[literal-required]
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(
            408,
            f"request body did not arrive within {self.limits.body_timeout_s:g}s "
            f"(MLAPI_BODY_TIMEOUT_S)",
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the protocol's error body and close the connection."""
        self._deadline_at = None
        body = orjson.dumps({"error": message})
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _OneSend:
    """The transport as one request's cycle sees it: the response's status line and
    headers (the cycle's first write, but for an interim 100 Continue, which goes at
    once) are held until the first body write and leave with it, in one send()
    instead of two (uvicorn writes them apart; the second syscall cost 3% of a
    loaded server's CPU). Every later write goes straight through."""

    __slots__ = ("_fresh", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._fresh = True  # nothing of the response written yet

    def write(self, data: bytes) -> None:
        if self._fresh and data != _CONTINUE:
            self._fresh = False
            self._held = data
            return
        held = self._held
        if held is None:
            self._transport.write(data)
            return
        self._held = None
        if len(data) <= 16384:
            self._transport.write(held + data)
        else:  # no copy of a large body: one vectored write
            self._transport.writelines((held, data))

    def close(self) -> None:
        if self._held is not None:  # headers of a response cut short: sent as before
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()
