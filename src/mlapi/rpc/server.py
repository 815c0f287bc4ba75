"""The gRPC server of one worker process: grpc.aio on the worker's own event loop
(the one uvicorn runs), so a gRPC call reaches the same data plane, registry,
batcher and metrics as an HTTP request, with no thread or process between them.
It serves the inference service (service.py) and the standard health service
(health.py).

What a caller can hold, and for how long, as HTTP bounds it:
- Every method is served as a stream of requests, so ml-api's code runs when the
  call's headers arrive, before its message: the key is checked from the
  metadata first, and a caller without one never makes the server read a byte.
- A message must arrive within MLAPI_BODY_TIMEOUT_S of the headers (the health
  service's small messages within MLAPI_HEADER_TIMEOUT_S); a call that stalls
  is answered DEADLINE_EXCEEDED and freed.
- Budgets per worker, each with its own count, so no kind of call can take the
  others' room: open health messages being received (``OPEN_READS``), health
  Watch streams (``WATCHES``), and keyed calls (MLAPI_MAX_CONNECTIONS). The
  requests without fields (ServerLive, ServerReady, ServerMetadata, List) are
  answered without reading their message at all.
- Per connection at most ``STREAMS_PER_CONNECTION`` calls at once; at most
  MLAPI_MAX_CONNECTIONS connections; metadata at most MLAPI_MAX_HEADER_BYTES; a
  connection with no call for ``IDLE_S`` is closed (a client reconnects by itself).

Ports: one worker binds API_GRPC_PORT alone (a second server on the port fails
to start, as for HTTP); with WORKERS > 1 every worker binds it with SO_REUSEPORT
and the kernel spreads connections over them (HTTP's workers share one socket
instead, which grpc.aio cannot take). Stopping: when the HTTP server stops
accepting (after the drain's grace), so does this one, and calls already
accepted get MLAPI_SHUTDOWN_TIMEOUT_S to finish, as HTTP requests do."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mlapi.errors import BadRequest, BodyTimeout, MlapiError, Overloaded
from mlapi.rpc import codec, messages
from mlapi.rpc.health import HealthService
from mlapi.rpc.service import (
    INFER_PATH,
    KEYED,
    OPEN,
    Context,
    Handler,
    InferenceService,
    call_of,
)
from mlapi.rpc.status import abort_of
from mlapi.serving.context import ServingContext

log = logging.getLogger("mlapi.grpc")

OPEN_READS = 8  # health messages being received at once (each arrives in one packet)
WATCHES = 64  # health Watch streams at once
STREAMS_PER_CONNECTION = 100  # HTTP/2's usual SETTINGS_MAX_CONCURRENT_STREAMS
IDLE_S = 60  # a connection with no call for this long is closed


def server_options(ctx: ServingContext) -> list[tuple[str, Any]]:
    settings = ctx.settings
    return [
        # A request message as large as an HTTP body may be; a larger one is refused
        # (RESOURCE_EXHAUSTED) before it reaches the server's code.
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_connection_idle_ms", IDLE_S * 1000),
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


class Budget:
    """At most ``size`` calls of one kind at once in this worker."""

    __slots__ = ("size", "taken", "what")

    def __init__(self, size: int, what: str) -> None:
        self.size, self.what, self.taken = size, what, 0

    def take(self) -> None:
        if self.taken >= self.size:
            raise Overloaded(f"this worker already has {self.size} {self.what}; retry shortly")
        self.taken += 1

    def give_back(self) -> None:
        self.taken -= 1


class GrpcFront:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None
        # Set when the port stops accepting: health Watch streams end then.
        self._closing = asyncio.Event()
        self.open_reads = Budget(OPEN_READS, "health messages being received")
        self.watches = Budget(WATCHES, "health Watch streams")
        self.keyed = Budget(
            ctx.settings.max_connections, "calls in progress (MLAPI_MAX_CONNECTIONS)"
        )
        self._service = InferenceService(ctx)
        self._health = HealthService(ctx, self._closing)

    async def start(self) -> None:
        settings = self.ctx.settings
        server = grpc.aio.server(options=server_options(self.ctx))
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.stream_unary_rpc_method_handler(
                self._unary(access, handler, request_type), response_serializer=_serialize
            )
            for name, (access, handler, request_type) in self._service.methods().items()
        }
        handlers["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
            self._infer, response_serializer=_serialize
        )
        health = self._health
        health_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Check": grpc.stream_unary_rpc_method_handler(
                self._unary(OPEN, health.check, messages.HealthCheckRequest),
                response_serializer=_serialize,
            ),
            "List": grpc.stream_unary_rpc_method_handler(
                self._unary(OPEN, health.list, None), response_serializer=_serialize
            ),
            "Watch": grpc.stream_stream_rpc_method_handler(
                self._watch, response_serializer=_serialize
            ),
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(messages.SERVICE, handlers),
                grpc.method_handlers_generic_handler(messages.HEALTH_SERVICE, health_handlers),
            )
        )
        address = _address(settings.api_host, settings.grpc_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        await server.start()
        self._server = server
        log.info("gRPC on %s", address)

    def stop(self) -> asyncio.Task[None]:
        """Stop accepting calls and give those in progress the shutdown timeout; the
        same task however often it is asked."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            await self._server.stop(grace=self.ctx.settings.shutdown_timeout_s)

    # ----- receiving a call's message ------------------------------------------
    async def _receive(self, context: Context, access: str) -> bytes:
        """The call's one request message, within its deadline."""
        settings = self.ctx.settings
        timeout_s = settings.header_timeout_s if access == OPEN else settings.body_timeout_s
        try:
            data = await asyncio.wait_for(context.read(), timeout_s)
        except TimeoutError:
            raise BodyTimeout(
                f"the request message did not arrive within {timeout_s:g}s "
                f"({'MLAPI_HEADER_TIMEOUT_S' if access == OPEN else 'MLAPI_BODY_TIMEOUT_S'})"
            ) from None
        if data is grpc.aio.EOF:
            raise BadRequest("the call carries no request message")
        return bytes(data)

    async def _message(self, context: Context, access: str, message_type: Any) -> Any:
        if access == OPEN:  # an open message is small: a budget of its own while it comes
            self.open_reads.take()
            try:
                data = await self._receive(context, access)
            finally:
                self.open_reads.give_back()
        else:
            data = await self._receive(context, access)
        return codec.parse_message(data, message_type)

    # ----- the handlers --------------------------------------------------------
    def _unary(
        self, access: str, handler: Handler, message_type: Any
    ) -> Callable[[AsyncIterator[bytes], Context], Awaitable[Any]]:
        async def call(requests: AsyncIterator[bytes], context: Context) -> Any:
            budget = None if access == OPEN else self.keyed
            try:
                client = self._service.check(access, _metadata(context))
                if budget is not None:
                    budget.take()
                try:
                    request = None
                    if message_type is not None:
                        request = await self._message(context, access, message_type)
                    return await handler(request, context, client)
                finally:
                    if budget is not None:
                        budget.give_back()
            except MlapiError as exc:
                status, details = abort_of(exc)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                status, details = _internal(exc, None)
            # aborted outside the except block: nothing of the call (its message, a
            # traceback's frames) stays referenced by the error grpc keeps
            await context.abort(status, details)

        return call

    async def _infer(self, requests: AsyncIterator[bytes], context: Context) -> Any:
        """ModelInfer through the data plane: the key from the metadata, the in-flight
        room, then the message (within its deadline), then the rest."""
        metadata = _metadata(context)
        call = call_of(metadata, INFER_PATH)
        try:
            self.keyed.take()
            try:
                return await self._service.model_infer(
                    call, lambda: self._receive(context, KEYED), context
                )
            finally:
                self.keyed.give_back()
        except MlapiError as exc:
            status, details = abort_of(exc)
        await context.abort(status, details)

    async def _watch(self, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        try:
            request = await self._message(context, OPEN, messages.HealthCheckRequest)
            self.watches.take()
        except MlapiError as exc:
            status, details = abort_of(exc)
        else:
            try:
                async for message in self._health.watch(request, context):
                    yield message
            finally:
                self.watches.give_back()
            return
        await context.abort(status, details)


def _metadata(context: Context) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(context.invocation_metadata() or ())


def _internal(exc: Exception, request_id: str | None) -> tuple[grpc.StatusCode, str]:
    request_id = request_id or uuid.uuid4().hex
    log.error(
        "unhandled %s on gRPC call (request id %s)", type(exc).__name__, request_id, exc_info=exc
    )
    return grpc.StatusCode.INTERNAL, f"internal server error (request id {request_id})"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
