"""API key check: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (HTTP
headers or gRPC metadata alike), compared in constant time. Health routes are
never wrapped with it."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from pydantic import SecretStr

from mlapi.errors import BadRequest, Unauthorized


class Authenticator:
    def __init__(self, key: SecretStr) -> None:
        self._key = key.get_secret_value().encode()  # UTF-8

    def __repr__(self) -> str:
        return "Authenticator(key=**********)"

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Check the credentials among a request's (lower-case) headers or metadata."""
        self.check_values(*credentials(headers))

    def check_values(self, authorization: str | None, api_key: str | None) -> None:
        """Every credential presented must be right (a good X-API-Key does not excuse
        a wrong Authorization header), and at least one must be presented."""
        if authorization is None and api_key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized("unsupported Authorization scheme: use 'Bearer <key>'")
            self._compare(token.strip())
        if api_key is not None:
            self._compare(api_key)

    def _compare(self, presented: str) -> None:
        if not hmac.compare_digest(_raw(presented), self._key):
            raise Unauthorized("invalid API key")


def _raw(presented: str) -> bytes:
    """The bytes the client sent: HTTP header values are decoded as latin-1, so a key
    of non-ASCII characters (sent as UTF-8) comes back byte for byte that way."""
    try:
        return presented.encode("latin-1")  # pragma: no mutate (codec names ignore case)
    except UnicodeEncodeError:  # gRPC metadata: text decoded from UTF-8
        return presented.encode(errors="surrogateescape")


def duplicate_credentials() -> BadRequest:
    return BadRequest("more than one Authorization or X-API-Key header")


def credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(Authorization, X-API-Key); BadRequest when either comes more than once, so
    every route reads the same one."""
    authorization = api_key = None
    for key, value in headers:
        if key == b"authorization":
            if authorization is not None:
                raise duplicate_credentials()
            authorization = value.decode("latin-1")  # pragma: no mutate (as above)
        elif key == b"x-api-key":
            if api_key is not None:
                raise duplicate_credentials()
            api_key = value.decode("latin-1")  # pragma: no mutate (as above)
    return authorization, api_key
