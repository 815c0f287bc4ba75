"""The hot path: ``POST /v2/models/{m}[/versions/{v}]/infer`` answered straight
from ASGI, in front of the Starlette app. It does everything the routed version
does (header limit, API key, body limit and encodings, the same decode/infer/
encode through ``v2.run_infer``, the same error bodies) without the framework's
per-request middleware, routing, Request and Response objects, which cost more
than decoding and predicting a small request. Anything else goes to the app."""

from __future__ import annotations

import logging

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from mlapi.api.body import BODY_TIMED_OUT, receive_body
from mlapi.api.guard import check_host
from mlapi.api.responses import error_headers
from mlapi.api.v2 import run_infer
from mlapi.batching import Gone
from mlapi.errors import HeadersTooLarge, MlapiError
from mlapi.serving.auth import duplicate_credentials
from mlapi.serving.context import ServingContext
from mlapi.serving.tracking import outcome_of

log = logging.getLogger("mlapi.api")

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = [(b"content-type", b"application/json")]
_BINARY = [(b"content-type", b"application/octet-stream")]


class FastInfer:
    def __init__(self, app: Starlette, ctx: ServingContext, max_header_bytes: int) -> None:
        self.app = app
        self.state = app.state  # the application's state, as on the Starlette app
        self._registry = ctx.registry
        self._auth = ctx.auth
        self._tracking = ctx.tracking
        self._max_body = ctx.settings.max_body_bytes
        self._limits = ctx.limits
        self._hosts = ctx.settings.host_names
        self._max_header_bytes = max_header_bytes

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
        for key, value in scope["headers"]:
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
        tracked = self._tracking.begin(name, "POST", scope["path"], request_id)
        try:
            if header_bytes > self._max_header_bytes:
                raise HeadersTooLarge(self._max_header_bytes)
            check_host(host, self._hosts)
            if repeated:
                raise duplicate_credentials()
            if self._auth is not None:
                self._auth.check_values(authorization, api_key)
            model = self._registry.get(name, version)
            tracked.resolved(model)
            model.admit()
            body = await receive_body(receive, length, encoding, self._max_body)
            tracked.enter()
            content, binary_header = await run_infer(
                model, body, header_length, self._limits, _disconnect_probe(receive)
            )
        except MlapiError as exc:
            await _send_error(send, exc)
            tracked.done(exc.status, outcome_of(exc))
            return
        except ClientDisconnect:
            if scope.get(BODY_TIMED_OUT):  # the connection answered 408
                tracked.done(408, "timeout")
            else:
                tracked.done(499, "cancelled")
            return
        except Exception as exc:
            request_id = tracked.id()
            log.error(
                "unhandled %s on POST %s (request id %s)",
                type(exc).__name__,
                scope["path"],
                request_id,
                exc_info=exc,
            )
            message = f"internal server error (request id {request_id})"
            await _send_json(
                send, 500, {"error": message}, [(b"x-request-id", request_id.encode())]
            )
            tracked.done(500, "error")
            return
        if binary_header is None:
            headers = [*_JSON, (b"content-length", str(len(content)).encode())]
        else:
            headers = [
                *_BINARY,
                (b"content-length", str(len(content)).encode()),
                (b"inference-header-content-length", str(binary_header).encode()),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        tracked.done(200, "ok")


def _disconnect_probe(receive: Receive) -> Gone | None:
    """A cheap 'has the client gone?' for the batcher to check before it runs a
    queued request. uvicorn's request cycle, which ``receive`` belongs to, keeps a
    ``disconnected`` flag; reading it costs nothing, unlike a task per request
    listening for http.disconnect. With another server there is no probe and the
    request deadline bounds the work instead."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not isinstance(getattr(cycle, "disconnected", None), bool):
        return None
    return lambda: bool(cycle.disconnected)


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
