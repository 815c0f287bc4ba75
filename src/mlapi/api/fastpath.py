"""The hot path: ``POST /v2/models/{m}[/versions/{v}]/infer`` answered straight
from ASGI, in front of the Starlette app. It does what every route does (the
header rules of api.guard, then the data plane's one infer path: key, admission,
body limit and encodings, decode, infer, encode, the same error bodies) without
the framework's per-request middleware, routing, Request and Response objects,
which cost more than decoding and predicting a small request. Anything else goes
to the app."""

from __future__ import annotations

from collections.abc import Awaitable

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from mlapi.api import codec
from mlapi.api.body import receive_body
from mlapi.api.calls import disconnect_probe
from mlapi.api.guard import HeaderRules
from mlapi.api.responses import error_headers, server_timing
from mlapi.errors import ClientGone, MlapiError
from mlapi.registry import ModelVersion
from mlapi.serving.codec import InferRequest
from mlapi.serving.context import ServingContext
from mlapi.serving.limits import Limits
from mlapi.serving.plane import Call, Wire

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = [(b"content-type", b"application/json")]
_BINARY = [(b"content-type", b"application/octet-stream")]


class FastInfer:
    def __init__(self, app: Starlette, ctx: ServingContext, guard: HeaderRules) -> None:
        self.app = app
        self.state = app.state  # the application's state, as on the Starlette app
        self._plane = ctx.plane
        self._max_body = ctx.settings.max_body_bytes
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
                version = None
                if len(parts) == 3 and parts[1] == "versions" and parts[2]:
                    version = parts[2]
                if parts[0] and (len(parts) == 1 or version is not None):
                    if scope["method"] != "POST":
                        await _send_json(
                            send,
                            405,
                            {"error": "method not allowed: use POST"},
                            [(b"allow", b"POST")],
                        )
                        return
                    await self._infer(scope, receive, send, parts[0], version)
                    return
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        length = encoding = header_length = authorization = api_key = request_id = None
        host = None
        header_bytes = 0
        repeated = False
        for key, value in scope["headers"]:  # one pass: the guard's, the plane's, the wire's
            header_bytes += len(key) + len(value)
            if key == b"content-length":
                length = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"authorization":
                repeated = repeated or authorization is not None
                authorization = value.decode("latin-1")
            elif key == b"x-api-key":
                repeated = repeated or api_key is not None
                api_key = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")
            elif key == b"host":
                host = value
        call = Call(
            name, version, "POST", scope["path"], request_id, authorization, api_key, repeated
        )
        call.raw_headers = scope["headers"]
        wire = _V2Wire(receive, scope, self._max_body, length, encoding, header_length)
        try:
            self._guard.check_values(header_bytes, host)
            content, binary_header = await self._plane.infer(call, wire)
        except ClientGone:
            return  # nobody to answer (or the connection has answered 408 itself)
        except MlapiError as exc:
            await _send_error(send, exc)
            return
        if binary_header is None:
            headers = [*_JSON, (b"content-length", str(len(content)).encode())]
        else:
            headers = [
                *_BINARY,
                (b"content-length", str(len(content)).encode()),
                (b"inference-header-content-length", str(binary_header).encode()),
            ]
        if wire.loaded_s is not None:  # it waited for an on-demand model's load
            timing = server_timing(wire.loaded_s)["server-timing"]
            headers.append((b"server-timing", timing.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class _V2Wire(Wire):
    """V2 infer on HTTP: JSON, or a JSON header and binary tensors."""

    __slots__ = ("encoding", "gone", "header_length", "length", "max_body", "receive", "scope")

    def __init__(
        self,
        receive: Receive,
        scope: Scope,
        max_body: int,
        length: str | None,
        encoding: str | None,
        header_length: str | None,
    ) -> None:
        self.receive, self.scope, self.max_body = receive, scope, max_body
        self.length, self.encoding, self.header_length = length, encoding, header_length
        self.gone = disconnect_probe(receive)

    def read(self) -> Awaitable[bytes]:
        return receive_body(self.receive, self.length, self.encoding, self.max_body, self.scope)

    def decode(self, body: bytes, model: ModelVersion, limits: Limits) -> InferRequest:
        return codec.parse_infer(body, self.header_length, model.signature, limits)

    def encode(
        self, model: ModelVersion, decoded: InferRequest, results: dict[str, np.ndarray]
    ) -> tuple[bytes, int | None]:
        return codec.render_infer(model.name, model.version, decoded, results)


async def _send_error(send: Send, error: MlapiError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in error_headers(error).items()]
    await _send_json(send, error.status, {"error": error.message}, extra)


async def _send_json(
    send: Send, status: int, document: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(document)
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
