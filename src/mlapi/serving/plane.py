"""One infer path under every front. A request's life, written once:

    begin tracking -> the key (its client, its rate) -> the client may call the model
    -> resolve the model (an on-demand model not loaded here: load it and wait)
    -> admit (queue room, in-flight room) -> read the body ->
    enter (in flight) -> decode -> infer -> encode -> done

Every front (V2 JSON and binary on the fast path, KServe V1, OpenAI, gRPC) hands
the plane a ``Call`` (what it knows before the body: who, which model, how it came)
and a ``Wire`` (how to read, decode and encode its own format), and renders what
comes back: the encoded answer, or an ``MlapiError`` (``InternalError`` for
anything unexpected, its request id in the log line; ``ClientGone`` when nobody
is left to answer). So a rule on this path (a check, a limit, a count) holds on
every front, and no framework exception travels below the fronts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mlapi.batching import Gone
from mlapi.errors import BadRequest, InternalError, MlapiError
from mlapi.registry import Cold, ModelRegistry, ModelVersion
from mlapi.serving.access import Access
from mlapi.serving.keys import Client
from mlapi.serving.lane import OFFLOAD_BYTES, off_loop
from mlapi.serving.limits import Limits
from mlapi.serving.payloads import PayloadLog
from mlapi.serving.tracking import Tracked, Tracking

log = logging.getLogger("mlapi.api")


@dataclass(slots=True)
class Call:
    """What a front knows of a request before its body."""

    model: str | None  # None: the body names it (OpenAI's "model" field)
    version: str | None
    method: str  # for the access log: "POST", "gRPC"
    path: str
    request_id: str | None
    authorization: str | None
    api_key: str | None
    repeated_credentials: bool = False
    protocol: str = "http"  # the metrics label
    # the request's headers as the front has them (ASGI byte pairs, gRPC metadata):
    # read only for a canary keyed by a header other than X-Request-Id
    raw_headers: Sequence[tuple[Any, Any]] = ()

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case), or None."""
        if name == "x-request-id":
            return self.request_id
        for key, value in self.raw_headers:
            key = key.decode("latin-1") if isinstance(key, bytes) else key
            if key == name:
                return value.decode("latin-1") if isinstance(value, bytes) else str(value)
        return None

    def read(self, headers: Iterable[tuple[str, str]]) -> Call:
        """Its credentials and request id from a request's (lower-case) headers or
        gRPC metadata; a credential given twice is marked, for the key check."""
        for key, value in headers:
            if key == "authorization":
                self.repeated_credentials |= self.authorization is not None
                self.authorization = value
            elif key == "x-api-key":
                self.repeated_credentials |= self.api_key is not None
                self.api_key = value
            elif key == "x-request-id":
                self.request_id = value
        return self


class Decoded(Protocol):
    """What a wire's decode gives the plane: the model's inputs and the outputs to
    compute. A front's own fields (a request id, binary outputs) ride along."""

    @property
    def inputs(self) -> dict[str, np.ndarray]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...


class Wire:
    """A front's format, as the plane drives it. ``read`` brings the body (or raises
    ClientGone / PayloadTooLarge); ``decode`` and ``encode`` run inline for small
    bodies and on the decode lane for large ones."""

    gone: Gone | None = None  # "has the client left?", checked before a queued run
    # seconds this request waited for its on-demand model to load (None: it was loaded);
    # the HTTP fronts say it in a Server-Timing header ("load;dur=<ms>")
    loaded_s: float | None = None

    def read(self) -> Awaitable[Any]:
        """The body (an awaitable: a front may hand back its reader's own coroutine)."""
        raise NotImplementedError

    # What decides whether decode runs off the loop: the body's length times this
    # (a front whose decoding costs more per byte says so).
    cost_per_byte = 1

    def model_of(self, body: Any) -> tuple[str, str | None]:
        """The model (and version) a body names: asked only when the call named none."""
        raise BadRequest("the request names no model")

    def decode(self, body: Any, model: ModelVersion, limits: Limits) -> Decoded:
        raise NotImplementedError

    def encode(self, model: ModelVersion, decoded: Any, results: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError


class Plane:
    def __init__(
        self,
        registry: ModelRegistry,
        tracking: Tracking,
        access: Access,
        limits: Limits,
        payloads: PayloadLog | None = None,
    ) -> None:
        self.registry = registry
        self.tracking = tracking
        self.access = access
        self.limits = limits
        self.payloads = payloads

    def authenticate(self, call: Call, admin: bool = False) -> Client:
        """The client the call's credentials name (an admin client with ``admin``),
        held to its rate: one credential of each kind at most, each a key, one at
        least, where keys are configured; the anonymous client where none is."""
        return self.access.admit(call.authorization, call.api_key, call.repeated_credentials, admin)

    async def infer(self, call: Call, wire: Wire) -> Any:
        """The encoded answer, or an MlapiError for the front to render; every
        request is counted, logged and released exactly once, however it ends."""
        tracking = self.tracking
        tracked = tracking.begin(
            call.model or "", call.method, call.path, call.request_id, call.protocol
        )
        model = decoded = None
        try:
            access = self.access
            client = access.identify(call.authorization, call.api_key, call.repeated_credentials)
            tracked.client = client.name
            access.limit(client)
            if call.model is not None:
                access.check_model(client, call.model)
                try:
                    model = self.registry.serve(call.model, call.version)
                except Cold:  # on demand, not loaded here: load it, within the deadline
                    model = await self._demand(call.model, call.version, tracked, wire)
                if model.canary is not None and call.version is None:
                    model = _canary(model, call)
                tracked.resolved(model)
                model.admit()
            if tracking.active >= tracking.max_inflight:
                tracked.check_room()  # full: refused before any body is read
            body = await wire.read()
            # Small bodies are converted inline, with no extra coroutine: the hot path.
            large = len(body) * wire.cost_per_byte > OFFLOAD_BYTES
            if model is None:
                name, version = (
                    await off_loop(wire.model_of, body) if large else wire.model_of(body)
                )
                tracked.name = name
                access.check_model(client, name)
                try:
                    model = self.registry.serve(name, version)
                except Cold:
                    model = await self._demand(name, version, tracked, wire)
                if model.canary is not None and version is None:
                    model = _canary(model, call)
                tracked.resolved(model)
                model.admit()
            tracked.enter()
            if large:
                decoded = await off_loop(wire.decode, body, model, self.limits)
            else:
                decoded = wire.decode(body, model, self.limits)
            del body  # a large body is not held while the model runs
            results = await model.infer(decoded.inputs, decoded.output_names, wire.gone)
            shadow = model.shadow
            if shadow is not None:  # a copy for the version on trial; never waited for
                shadow.offer(tracked.request_id, decoded.inputs, results)
            if sum(array.nbytes for array in results.values()) > OFFLOAD_BYTES:
                answer = await off_loop(wire.encode, model, decoded, results)
            else:
                answer = wire.encode(model, decoded, results)
        except MlapiError as exc:
            if model is not None and self.payloads is not None and self.payloads.sample(model):
                inputs = decoded.inputs if decoded is not None else None
                self._log_payload(model, tracked, exc.status, inputs, None, exc.message)
            # a traceback keeps its frames' locals: a refused request's data goes now
            body = decoded = None  # noqa: F841
            tracked.failed(exc)
            raise
        except asyncio.CancelledError:  # the client went away, or the server stopped
            tracked.done(499, "cancelled")
            raise
        except Exception as exc:
            request_id = tracked.id()
            log.error(
                "unhandled %s on %s %s (request id %s)",
                type(exc).__name__,
                call.method,
                call.path[:200],
                request_id,
                exc_info=exc,
            )
            error = InternalError(request_id)
            tracked.failed(error)
            raise error from None
        payloads = self.payloads
        if payloads is not None and payloads.sample(model):
            self._log_payload(model, tracked, 200, decoded.inputs, results)
        tracked.done(200, "ok")
        return answer

    async def _demand(
        self, name: str, version: str | None, tracked: Tracked, wire: Wire
    ) -> ModelVersion:
        waited = time.perf_counter()
        model = await self.registry.demand(name, version, tracked.started)
        wire.loaded_s = time.perf_counter() - waited
        return model

    def _log_payload(
        self,
        model: ModelVersion,
        tracked: Tracked,
        status: int,
        inputs: dict[str, np.ndarray] | None,
        outputs: dict[str, np.ndarray] | None,
        error: str | None = None,
    ) -> None:
        assert self.payloads is not None
        seconds = time.perf_counter() - tracked.started
        self.payloads.offer(
            model, tracked.request_id, tracked.client, status, seconds, inputs, outputs, error
        )


def _canary(served: ModelVersion, call: Call) -> ModelVersion:
    """The version a request meets while a canary runs: the trial for its share of
    request keys (while the trial is READY), else the one that serves."""
    canary = served.canary
    if canary is None or not canary.picks(call.header(canary.key)):
        return served
    trial = canary.trial
    return trial if trial.batcher is not None and not canary.decided else served
