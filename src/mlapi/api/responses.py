"""JSON responses, the protocol's error body, and the wrapper every route goes
through: the key (its client kept for the handler), typed errors to their status,
anything else to a 500 that carries a request id and never a traceback."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from mlapi.errors import (
    ClientGone,
    InternalError,
    MlapiError,
    Overloaded,
    RateLimited,
    Unauthorized,
)
from mlapi.serving.access import Access
from mlapi.serving.keys import ANONYMOUS, Client, credentials

log = logging.getLogger("mlapi.api")

Handler = Callable[[Request], Awaitable[Response]]
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=JSON_OPTIONS),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_headers(error: MlapiError) -> dict[str, str]:
    """The headers an error's status calls for (RFC 9110): who to authenticate as,
    when to retry."""
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, Overloaded | RateLimited):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, InternalError):
        return {"X-Request-ID": error.request_id}
    return {}


def error_response(error: MlapiError) -> Response:
    return json_response({"error": error.message}, error.status, error_headers(error) or None)


def internal_error(request: Request, exc: BaseException) -> InternalError:
    """What an unexpected exception on a route becomes: a log line with the
    traceback and a request id, and for the client only that id."""
    request_id = uuid.uuid4().hex
    log.error(
        "unhandled %s on %s %s (request id %s)",
        type(exc).__name__,
        request.method,
        request.url.path[:200],
        request_id,
        exc_info=exc,
    )
    return InternalError(request_id)


def route(
    handler: Handler,
    access: Access | None = None,
    render: Callable[[MlapiError], Response] = error_response,
    admin: bool = False,
) -> Handler:
    """Wrap a handler: with ``access``, the key (an admin key with ``admin``) and its
    client, which the handler finds with ``client_of``; errors rendered in the
    protocol's shape, or the one ``render`` gives."""

    async def wrapped(request: Request) -> Response:
        try:
            if access is not None:
                authorization, api_key = credentials(request.scope["headers"])
                client = access.admit(authorization, api_key, admin=admin)
                request.scope["mlapi.client"] = client
            return await handler(request)
        except ClientGone:
            return Response(status_code=400)  # nobody is listening; nothing to log
        except MlapiError as exc:
            return render(exc)
        except Exception as exc:
            return render(internal_error(request, exc))

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def client_of(request: Request) -> Client:
    """The client whose key the route checked (anonymous on an open route)."""
    client: Client = request.scope.get("mlapi.client", ANONYMOUS)
    return client


def server_timing(loaded_s: float | None) -> dict[str, str]:
    """The Server-Timing header of a request that waited for its model to load."""
    return {} if loaded_s is None else {"server-timing": f"load;dur={loaded_s * 1000:.1f}"}
