"""Reading a request body under the size limit: a declared Content-Length over the
limit is refused before a byte is read, and a body that grows past it is refused
as soon as it does. gzip and deflate bodies are inflated under the same limit."""

from __future__ import annotations

import zlib
from collections.abc import MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

from mlapi.errors import BadRequest, ClientGone, PayloadTooLarge, UnsupportedMediaType
from mlapi.serving.codec import is_number
from mlapi.serving.lane import off_loop

# Set in a request's scope by the connection when the body ran out of time (it has
# answered 408 and closed): the route then sees the client gone.
BODY_TIMED_OUT = "mlapi.body_timed_out"


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is over the limit of {max_bytes} bytes (MLAPI_MAX_BODY_BYTES)"
    )


async def read_body(request: Request, max_bytes: int) -> bytes:
    headers = request.headers
    return await receive_body(
        request.receive,
        headers.get("content-length"),
        headers.get("content-encoding"),
        max_bytes,
        request.scope,
    )


async def receive_body(
    receive: Receive,
    declared: str | None,
    encoding: str | None,
    max_bytes: int,
    scope: MutableMapping[str, Any] | None = None,
) -> bytes:
    """The whole body from the ASGI ``receive`` channel, within ``max_bytes``;
    ClientGone when the client leaves (408 when the connection timed the body out
    and has answered itself)."""
    if declared is not None:
        if not is_number(declared):
            raise BadRequest("Content-Length is not a number")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    if encoding is not None:
        encoding = encoding.strip().lower()  # content codings are case-insensitive
    if encoding is not None and encoding not in ("identity", "gzip", "deflate"):
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding '{encoding[:32]}' (use gzip or deflate)"
        )
    chunks = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone(timed_out=bool(scope and scope.get(BODY_TIMED_OUT)))
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding is None or encoding == "identity":
        return body
    # Inflating can take tens of milliseconds: on the conversion lane, off the loop.
    return await off_loop(_inflate, body, encoding, max_bytes)


def _inflate(body: bytes, encoding: str, max_bytes: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        raise BadRequest(f"body is not valid {encoding} data") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise _too_large(max_bytes)
    return out
