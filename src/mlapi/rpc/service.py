"""The GRPCInferenceService calls, each a thin front over the data plane: the
registry for readiness and metadata, ``Plane.infer`` for inference (the same key
check, admission, in-flight limit, deadline, metrics and access log as HTTP, with
``protocol="grpc"``), the repository operations for index/load/unload.

Who may call what is HTTP's rule: liveness, readiness and server metadata are
open; model calls take the API key (metadata ``authorization: Bearer <key>`` or
``x-api-key``); the repository calls take the admin key and can be turned off.
An error is the HTTP error's message under the gRPC status that means the same.

The key is checked from the call's metadata before its message is read (server.py
reads it), so a caller without one never makes the server receive or parse a byte."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from mlapi import __version__
from mlapi.errors import BadRequest, NotReady
from mlapi.registry import Cold, ModelVersion
from mlapi.rpc import codec, messages
from mlapi.serving import repository
from mlapi.serving.access import Access
from mlapi.serving.context import ServingContext
from mlapi.serving.keys import ANONYMOUS, Client
from mlapi.serving.limits import Limits
from mlapi.serving.metadata import EXTENSIONS, metadata_of
from mlapi.serving.plane import Call, Wire

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context, Client], Awaitable[Any]]
Receive = Callable[[], Awaitable[bytes]]
# Who may call a method: anyone, API key holders, admin key holders.
OPEN, KEYED, ADMIN = "open", "keyed", "admin"


def call_of(metadata: Sequence[tuple[str, str | bytes]], path: str) -> Call:
    """The plane's view of a gRPC call, from its metadata: its credentials and
    request id (a ModelInfer names its model in the message, not known yet)."""
    call = Call(None, None, "gRPC", path, None, None, None, protocol="grpc")
    call.raw_headers = metadata
    return call.read((key, _text(value)) for key, value in metadata)


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


class InferenceService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self.registry = ctx.registry

    def methods(self) -> dict[str, tuple[str, Handler, Any]]:
        """Method name -> (who may call, handler, request message class). A class of
        None: the request has no fields, and its message is never read."""
        return {
            "ServerLive": (OPEN, self.server_live, None),
            "ServerReady": (OPEN, self.server_ready, None),
            "ServerMetadata": (OPEN, self.server_metadata, None),
            "ModelReady": (KEYED, self.model_ready, messages.ModelReadyRequest),
            "ModelMetadata": (KEYED, self.model_metadata, messages.ModelMetadataRequest),
            "RepositoryIndex": (ADMIN, self.repository_index, messages.RepositoryIndexRequest),
            "RepositoryModelLoad": (
                ADMIN,
                self.repository_load,
                messages.RepositoryModelLoadRequest,
            ),
            "RepositoryModelUnload": (
                ADMIN,
                self.repository_unload,
                messages.RepositoryModelUnloadRequest,
            ),
        }

    def check(self, access: str, metadata: Sequence[tuple[str, str | bytes]]) -> Client:
        """The call's client, from its metadata alone: before its message is read."""
        if access == OPEN:
            return ANONYMOUS
        client = self.ctx.plane.authenticate(call_of(metadata, ""), admin=access == ADMIN)
        if access == ADMIN:
            repository.check_enabled(self.ctx.settings)
        return client

    # ----- health and metadata ---------------------------------------------------
    async def server_live(self, request: Any, context: Context, client: Client) -> Any:
        return messages.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Context, client: Client) -> Any:
        ready = self.registry.readiness()[0] and not self.ctx.lifecycle.draining
        return messages.ServerReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: Context, client: Client) -> Any:
        return messages.ServerMetadataResponse(
            name="mlapi", version=__version__, extensions=EXTENSIONS
        )

    async def model_ready(self, request: Any, context: Context, client: Client) -> Any:
        Access.check_model(client, request.name)
        try:
            self.registry.get(request.name, request.version or None)
        except Cold:  # on demand: a request loads it
            return messages.ModelReadyResponse(ready=True)
        except NotReady:
            return messages.ModelReadyResponse(ready=False)
        return messages.ModelReadyResponse(ready=True)

    async def model_metadata(self, request: Any, context: Context, client: Client) -> Any:
        Access.check_model(client, request.name)
        body = await metadata_of(self.registry, request.name, request.version or None)
        body.pop("parameters", None)  # labels: the gRPC message has no place for them
        return messages.ModelMetadataResponse(**body)

    # ----- inference -------------------------------------------------------------
    async def model_infer(self, call: Call, receive: Receive, context: Context) -> Any:
        """The data plane's one infer path, with gRPC's wire."""
        wire = GrpcWire(receive, context)
        try:
            return await self.ctx.plane.infer(call, wire)
        finally:
            wire.request = None  # a refused call's message goes now, not at a collection

    # ----- repository ------------------------------------------------------------
    async def repository_index(self, request: Any, context: Context, client: Client) -> Any:
        _no_other_repository(request.repository_name)
        response = messages.RepositoryIndexResponse()
        for item in repository.index_items(self.registry, request.ready):
            if not client.may_call(str(item["name"])):
                continue
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

    async def repository_load(self, request: Any, context: Context, client: Client) -> Any:
        _no_other_repository(request.repository_name)
        if request.parameters:
            raise BadRequest("load takes no parameters: publish a version to the repository")
        Access.check_model(client, request.model_name)
        await repository.load_model(self.registry, request.model_name)
        return messages.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: Context, client: Client) -> Any:
        _no_other_repository(request.repository_name)
        Access.check_model(client, request.model_name)
        await self.registry.unload(request.model_name)
        return messages.RepositoryModelUnloadResponse()


class GrpcWire(Wire):
    """ModelInfer: the message is read (with its deadline) by ``receive``, parsed to
    learn the model it names, then its tensors decoded; the plane runs both off the
    event loop when the message is large, whatever part of it is large."""

    __slots__ = ("gone", "raw", "receive", "request")

    def __init__(self, receive: Receive, context: Context) -> None:
        self.receive = receive
        self.request: Any = None
        self.raw = False
        self.gone = context.done

    def read(self) -> Awaitable[bytes]:
        return self.receive()

    def model_of(self, body: bytes) -> tuple[str, str | None]:
        self.request = codec.parse_message(body, messages.ModelInferRequest)
        return self.request.model_name, self.request.model_version or None

    def decode(self, body: bytes, model: ModelVersion, limits: Limits) -> codec.InferRequest:
        parsed, self.raw = codec.parse_infer(self.request, model.signature, limits)
        self.request = None  # the arrays hold what they need of it
        return parsed

    def encode(
        self, model: ModelVersion, decoded: codec.InferRequest, results: dict[str, np.ndarray]
    ) -> Any:
        return codec.render_infer(model.name, model.version, decoded, results, self.raw)


def _no_other_repository(name: str) -> None:
    if name:
        raise BadRequest(f"unknown repository '{name[:64]}': leave repository_name empty")
