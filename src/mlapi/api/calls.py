"""What the HTTP routes hand the data plane: a ``Call`` from a request's headers
(credentials, request id) and a probe that tells whether its client has gone."""

from __future__ import annotations

from starlette.types import Receive, Scope

from mlapi.batching import Gone
from mlapi.serving.plane import Call


def call_of(scope: Scope, model: str | None, version: str | None = None) -> Call:
    call = Call(model, version, scope["method"], scope["path"], None, None, None)
    for key, value in scope["headers"]:
        if key == b"authorization":
            call.repeated_credentials |= call.authorization is not None
            call.authorization = value.decode("latin-1")
        elif key == b"x-api-key":
            call.repeated_credentials |= call.api_key is not None
            call.api_key = value.decode("latin-1")
        elif key == b"x-request-id":
            call.request_id = value.decode("latin-1")
    return call


def disconnect_probe(receive: Receive) -> Gone | None:
    """A cheap 'has the client gone?' for the batcher to check before it runs a
    queued request. uvicorn's request cycle, which ``receive`` belongs to, keeps a
    ``disconnected`` flag; reading it costs nothing, unlike a task per request
    listening for http.disconnect. With another server there is no probe and the
    request deadline bounds the work instead (tests/unit/test_uvicorn_contract.py
    holds uvicorn to what this reads)."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not isinstance(getattr(cycle, "disconnected", None), bool):
        return None
    return lambda: bool(cycle.disconnected)
