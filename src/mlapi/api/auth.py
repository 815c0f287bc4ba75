"""API key check: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``,
compared in constant time. Health routes are never wrapped with it."""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request

from mlapi.errors import Unauthorized


class Authenticator:
    def __init__(self, key: SecretStr) -> None:
        self._key = key.get_secret_value().encode("utf-8")

    def __repr__(self) -> str:
        return "Authenticator(key=**********)"

    def check(self, request: Request) -> None:
        headers = request.headers
        self.check_values(headers.get("authorization"), headers.get("x-api-key"))

    def check_values(self, authorization: str | None, api_key: str | None) -> None:
        presented = api_key
        if presented is None:
            if authorization is None:
                raise Unauthorized(
                    "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
                )
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized("unsupported Authorization scheme: use 'Bearer <key>'")
            presented = presented.strip()
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._key):
            raise Unauthorized("invalid API key")
