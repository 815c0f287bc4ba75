"""Checks made on the headers alone, before a route runs: their total size, the Host
a key-less server answers to (so a web page cannot read answers through DNS
rebinding), and the browser markers that the repository routes refuse (so a web
page cannot drive them)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from mlapi.api.responses import error_response
from mlapi.errors import Forbidden, HeadersTooLarge, UnsupportedMediaType

# Open to any Host: orchestrators and scrapers reach these by container address.
_ANY_HOST_PREFIXES = ("/health", "/v2/health", "/metrics")
_JSON = b"application/json"


def check_host(host: bytes | None, allowed: frozenset[str] | None) -> None:
    """Forbidden unless ``allowed`` is None (any host) or holds the Host's name."""
    if allowed is None or host is None:
        return
    text = host.decode("latin-1").strip().lower()
    name = text[: text.find("]") + 1] if text.startswith("[") else text.split(":", 1)[0]
    if name not in allowed:
        raise Forbidden(
            f"Host '{text[:64]}' is not allowed: without an API key the server answers only "
            f"loopback names; add the name to MLAPI_ALLOWED_HOSTS"
        )


def check_not_cross_site(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """For routes that change state. A browser sends ``Origin`` with every POST and
    can send one without asking first only with no body or a form or text body:
    refuse both markers, and give no CORS answer, so no page can reach these routes.
    Clients that are not browsers (curl, tritonclient) send neither."""
    for key, value in headers:
        if key == b"origin":
            raise Forbidden("requests from a web page (with an Origin header) are refused here")
        if key == b"content-type" and value.split(b";", 1)[0].strip().lower() != _JSON:
            raise UnsupportedMediaType("this route takes Content-Type: application/json only")


class HeaderRules:
    """The rules on a request's headers alone, in one place for every HTTP route (the
    Starlette routes through RequestGuard, the infer fast path directly): their total
    size (431; the connection also stops reading past it, see connections.py) and
    the Host a key-less server answers (403)."""

    def __init__(self, max_bytes: int, hosts: frozenset[str] | None) -> None:
        self.max_bytes = max_bytes
        self.hosts = hosts

    def check(self, scope: Scope) -> None:
        total = 0
        host = None
        for name, value in scope["headers"]:
            total += len(name) + len(value)
            if name == b"host":
                host = value
        self.check_values(total, None if scope["path"].startswith(_ANY_HOST_PREFIXES) else host)

    def check_values(self, header_bytes: int, host: bytes | None) -> None:
        """The rules, given what one pass over the headers found (the fast path
        makes that pass for its own headers too); ``host`` None: any is answered."""
        if header_bytes > self.max_bytes:
            raise HeadersTooLarge(self.max_bytes)
        check_host(host, self.hosts)


class RequestGuard:
    """Refuse, with the protocol's error body, a request that breaks the header rules."""

    def __init__(self, app: ASGIApp, rules: HeaderRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.rules.check(scope)
            except (HeadersTooLarge, Forbidden) as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
