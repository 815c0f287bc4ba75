"""The gRPC server of one worker process: grpc.aio on the worker's own event loop
(the one uvicorn runs), so a gRPC call reaches the same registry, batcher and
metrics as an HTTP request, with no thread or process between them. It serves
the inference service (service.py) and the standard health service (health.py).

Ports: one worker binds API_GRPC_PORT alone (a second server on the port fails
to start, as for HTTP); with WORKERS > 1 every worker binds it with SO_REUSEPORT
and the kernel spreads connections over them (HTTP's workers share one socket
instead, which grpc.aio cannot take). Stopping: when the HTTP server stops
accepting (after the drain's grace), so does this one, and calls already
accepted get MLAPI_SHUTDOWN_TIMEOUT_S to finish, as HTTP requests do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mlapi.rpc import messages
from mlapi.rpc.health import HealthService
from mlapi.rpc.service import Context, Handler, InferenceService
from mlapi.serving.context import ServingContext

log = logging.getLogger("mlapi.grpc")


def server_options(ctx: ServingContext) -> list[tuple[str, Any]]:
    settings = ctx.settings
    return [
        # A request message as large as an HTTP body may be; a larger one is refused
        # (RESOURCE_EXHAUSTED) before it reaches the server's code.
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        # Idle connections are closed after 5 minutes (clients reconnect by themselves).
        ("grpc.max_connection_idle_ms", 300_000),
    ]


class GrpcFront:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None
        # Set when the port stops accepting: health Watch streams end then.
        self._closing = asyncio.Event()

    async def start(self) -> None:
        settings = self.ctx.settings
        server = grpc.aio.server(
            options=server_options(self.ctx),
            # calls in progress at once, as MLAPI_MAX_CONNECTIONS bounds HTTP's
            maximum_concurrent_rpcs=settings.max_connections,
        )
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                _parsing(handler, request_type), response_serializer=_serialize
            )
            for name, (handler, request_type) in InferenceService(self.ctx).handlers().items()
        }
        health = HealthService(self.ctx, self._closing)
        health_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Check": grpc.unary_unary_rpc_method_handler(
                _parsing(health.check, messages.HealthCheckRequest),
                response_serializer=_serialize,
            ),
            "List": grpc.unary_unary_rpc_method_handler(
                _parsing(health.list, messages.HealthListRequest),
                response_serializer=_serialize,
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                _parsing_stream(health.watch, messages.HealthCheckRequest),
                response_serializer=_serialize,
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


def _parsing(handler: Handler, request_type: Any) -> Handler:
    """The handler, given the request's bytes: a message that does not parse is the
    client's error (INVALID_ARGUMENT), not the server's (grpc's own parsing would
    answer INTERNAL)."""

    async def call(data: bytes, context: Context) -> Any:
        return await handler(await _decoded(data, request_type, context), context)

    return call


def _parsing_stream(
    handler: Callable[[Any, Context], AsyncIterator[Any]], request_type: Any
) -> Callable[[bytes, Context], AsyncIterator[Any]]:
    """As _parsing, for a call that answers with a stream."""

    async def call(data: bytes, context: Context) -> AsyncIterator[Any]:
        async for message in handler(await _decoded(data, request_type, context), context):
            yield message

    return call


async def _decoded(data: bytes, request_type: Any, context: Context) -> Any:
    try:
        return request_type.FromString(data)
    except DecodeError:
        what = request_type.DESCRIPTOR.name
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {what} message"
        )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
