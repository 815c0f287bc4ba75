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
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._key):
            raise Unauthorized("invalid API key")
