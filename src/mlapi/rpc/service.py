"""The GRPCInferenceService calls, each a thin front over what the HTTP routes use:
the registry for readiness and metadata, ``Tracking`` + the model's batcher for
inference (the same in-flight limit, deadline, metrics and access log, with
``protocol="grpc"``), the repository functions for index/load/unload.

Who may call what is HTTP's rule: liveness, readiness and server metadata are
open; model calls take the API key (metadata ``authorization: Bearer <key>`` or
``x-api-key``); the repository calls take the admin key and can be turned off.
An error is the HTTP error's message under the gRPC status that means the same."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc

from mlapi import __version__
from mlapi.api import repository, v2
from mlapi.errors import BadRequest, MlapiError, NotReady
from mlapi.rpc import codec, messages
from mlapi.serving.auth import Authenticator, credentials
from mlapi.serving.context import ServingContext
from mlapi.serving.lane import convert
from mlapi.serving.tracking import outcome_of

log = logging.getLogger("mlapi.grpc")

# The gRPC status of each error code; by HTTP status for the rest.
_STATUS_OF_CODE = {
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "not_ready": grpc.StatusCode.UNAVAILABLE,
    "overloaded": grpc.StatusCode.UNAVAILABLE,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "insufficient_memory": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "model_load_failed": grpc.StatusCode.FAILED_PRECONDITION,
    "unsafe_model_file": grpc.StatusCode.FAILED_PRECONDITION,
}
_INFER = "/inference.GRPCInferenceService/ModelInfer"


def status_of(error: MlapiError) -> grpc.StatusCode:
    code = _STATUS_OF_CODE.get(error.code)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.INTERNAL


Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Awaitable[Any]]


class InferenceService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self.registry = ctx.registry
        self._limits = ctx.limits

    def handlers(self) -> dict[str, tuple[Handler, Any]]:
        """Method name -> (handler, request message class)."""
        return {
            "ServerLive": (self.server_live, messages.ServerLiveRequest),
            "ServerReady": (self.server_ready, messages.ServerReadyRequest),
            "ModelReady": (self.guarded(self.model_ready), messages.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, messages.ServerMetadataRequest),
            "ModelMetadata": (self.guarded(self.model_metadata), messages.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, messages.ModelInferRequest),
            "RepositoryIndex": (self.admin(self.repository_index), messages.RepositoryIndexRequest),
            "RepositoryModelLoad": (
                self.admin(self.repository_load),
                messages.RepositoryModelLoadRequest,
            ),
            "RepositoryModelUnload": (
                self.admin(self.repository_unload),
                messages.RepositoryModelUnloadRequest,
            ),
        }

    # ----- who may call ----------------------------------------------------------
    def guarded(self, handler: Handler) -> Handler:
        return _wrapped(handler, lambda context: _authenticate(self.ctx.auth, _metadata(context)))

    def admin(self, handler: Handler) -> Handler:
        def check(context: Context) -> None:
            _authenticate(self.ctx.admin_auth, _metadata(context))
            repository.check_enabled(self.ctx.settings)

        return _wrapped(handler, check)

    # ----- health and metadata ---------------------------------------------------
    async def server_live(self, request: Any, context: Context) -> Any:
        return messages.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Context) -> Any:
        ready = self.registry.readiness()[0] and not self.ctx.lifecycle.draining
        return messages.ServerReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: Context) -> Any:
        return messages.ServerMetadataResponse(
            name="mlapi", version=__version__, extensions=v2.EXTENSIONS
        )

    async def model_ready(self, request: Any, context: Context) -> Any:
        try:
            self.registry.get(request.name, request.version or None)
        except NotReady:
            return messages.ModelReadyResponse(ready=False)
        return messages.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: Any, context: Context) -> Any:
        body = v2.metadata_of(self.registry, request.name, request.version or None)
        body.pop("parameters", None)  # labels: the gRPC message has no place for them
        return messages.ModelMetadataResponse(**body)

    # ----- inference -------------------------------------------------------------
    async def model_infer(self, request: Any, context: Context) -> Any:
        """As the HTTP fast path: resolve, admit, count in flight, decode, infer,
        encode; every request is counted once, however it ends."""
        ctx = self.ctx
        metadata = _metadata(context)
        request_id = next((str(v) for k, v in metadata if k == "x-request-id"), None)
        tracked = ctx.tracking.begin(request.model_name, "gRPC", _INFER, request_id, "grpc")
        try:
            _authenticate(ctx.auth, metadata)
            model = self.registry.get(request.model_name, request.model_version or None)
            tracked.resolved(model)
            model.admit()
            tracked.enter()
            signature = model.signature
            size = codec.raw_size(request)
            parsed, raw = await convert(size, codec.parse_infer, request, signature, self._limits)
            results = await model.infer(parsed.inputs, parsed.output_names, context.done)
            size = sum(array.nbytes for array in results.values())
            response = await convert(
                size, codec.render_infer, model.name, model.version, parsed, results, raw
            )
        except MlapiError as exc:
            tracked.done(exc.status, outcome_of(exc))
            await _abort(context, exc)
        except asyncio.CancelledError:  # the client went away, or the server stopped
            tracked.done(499, "cancelled")
            raise
        except Exception as exc:
            tracked.done(500, "error")
            await _internal(context, exc, tracked.id())
        tracked.done(200, "ok")
        return response

    # ----- repository ------------------------------------------------------------
    async def repository_index(self, request: Any, context: Context) -> Any:
        _no_other_repository(request.repository_name)
        response = messages.RepositoryIndexResponse()
        for item in repository.index_items(self.registry, request.ready):
            role = (
                "candidate" if item.get("candidate") else "previous" if item.get("previous") else ""
            )
            reason = "; ".join(filter(None, [role, str(item.get("reason") or "")]))
            response.models.add(
                name=str(item["name"]),
                version=str(item.get("version", "")),
                state=str(item["state"]),
                reason=reason,
            )
        return response

    async def repository_load(self, request: Any, context: Context) -> Any:
        _no_other_repository(request.repository_name)
        if request.parameters:
            raise BadRequest("load takes no parameters: publish a version to the repository")
        await repository.load_model(self.registry, request.model_name)
        return messages.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: Context) -> Any:
        _no_other_repository(request.repository_name)
        await self.registry.unload(request.model_name)
        return messages.RepositoryModelUnloadResponse()


def _wrapped(handler: Handler, check: Callable[[Context], None]) -> Handler:
    async def call(request: Any, context: Context) -> Any:
        try:
            check(context)
            return await handler(request, context)
        except MlapiError as exc:
            await _abort(context, exc)
        except Exception as exc:
            await _internal(context, exc, None)

    return call


def _metadata(context: Context) -> Sequence[tuple[str, str | bytes]]:
    return tuple(context.invocation_metadata() or ())


def _authenticate(auth: Authenticator | None, metadata: Sequence[tuple[str, str | bytes]]) -> None:
    if auth is None:
        return
    pairs = ((key.encode("latin-1"), _value(value)) for key, value in metadata)
    auth.check_values(*credentials(pairs))


def _value(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _no_other_repository(name: str) -> None:
    if name:
        raise BadRequest(f"unknown repository '{name[:64]}': leave repository_name empty")


async def _abort(context: Context, error: MlapiError) -> NoReturn:
    await context.abort(status_of(error), error.message)
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


async def _internal(context: Context, exc: Exception, request_id: str | None) -> NoReturn:
    request_id = request_id or _new_id()
    log.error(
        "unhandled %s on gRPC call (request id %s)", type(exc).__name__, request_id, exc_info=exc
    )
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal server error (request id {request_id})"
    )
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


def _new_id() -> str:
    return uuid.uuid4().hex
