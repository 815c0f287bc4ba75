"""What the HTTP routes hand the data plane: a ``Call`` from a request's headers
(credentials, request id) and a probe that tells whether its client has gone."""

from __future__ import annotations

from starlette.types import Receive, Scope

from mlapi.batching import Gone
from mlapi.serving.plane import Call


def call_of(scope: Scope, model: str | None, version: str | None = None) -> Call:
    call = Call(model, version, scope["method"], scope["path"], None, None, None)
    call.raw_headers = scope["headers"]
    return call.read((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])


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
