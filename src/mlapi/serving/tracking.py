"""Per-request bookkeeping of the inference routes: the mlapi_requests_total
outcome, latency and in-flight metrics, and the access log line (every request
with MLAPI_ACCESS_LOG=all, only failed ones with the default ``errors``). Health
and metrics routes never come through here."""

from __future__ import annotations

import logging
import re
import time
import uuid

from mlapi.errors import GatewayTimeout, MlapiError, Overloaded
from mlapi.observability.metrics import OUTCOMES, UNKNOWN_MODEL, Metrics
from mlapi.registry import ModelRegistry, ModelVersion

log = logging.getLogger("mlapi.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def outcome_of(error: MlapiError) -> str:
    return OUTCOMES.get(error.code, "error")


class Tracking:
    def __init__(
        self, metrics: Metrics, registry: ModelRegistry, access_log: str, max_inflight: int
    ) -> None:
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.registry = registry
        self.log_all = access_log == "all"
        self.log_errors = access_log != "off"
        self.active = 0  # inference requests between enter() and done(), this process

    def begin(
        self, name: str, method: str, path: str, request_id: str | None, protocol: str = "http"
    ) -> Tracked:
        return Tracked(self, name, method, path, request_id, protocol)


class Tracked:
    """One request on its way through an inference route."""

    __slots__ = (
        "_model",
        "_tracking",
        "client",
        "counted",
        "method",
        "name",
        "path",
        "protocol",
        "request_id",
        "started",
    )

    def __init__(
        self,
        tracking: Tracking,
        name: str,
        method: str,
        path: str,
        request_id: str | None,
        protocol: str = "http",
    ) -> None:
        self._tracking = tracking
        self._model: ModelVersion | None = None
        self.counted = False
        self.client = ""  # the key's client once the key is checked ("": not known)
        self.name = name
        self.method = method
        self.path = path
        self.protocol = protocol
        self.request_id = request_id if request_id and _REQUEST_ID.match(request_id) else None
        self.started = time.perf_counter()

    def resolved(self, model: ModelVersion) -> None:
        self._model = model
        self.name = model.name
        model.hold()  # a version being replaced waits for this request

    def check_room(self) -> None:
        """Overloaded (503) when MLAPI_MAX_INFLIGHT requests are in flight already:
        asked before a body is read, so a full server reads none."""
        tracking = self._tracking
        if tracking.active >= tracking.max_inflight:
            raise Overloaded(
                f"the server has {tracking.max_inflight} requests in flight "
                f"(MLAPI_MAX_INFLIGHT); retry shortly"
            )

    def enter(self) -> None:
        """The body is read: from now on the request is in flight. Overloaded (503)
        past MLAPI_MAX_INFLIGHT such requests in this process. A client still sending
        its body holds no slot (the connection's body deadline bounds it)."""
        tracking = self._tracking
        if tracking.active >= tracking.max_inflight:
            self.check_room()  # raises
        tracking.active += 1
        self.counted = True
        model = self._model
        if model is not None and model.metrics is not None:
            model.metrics.inflight_count += 1

    def id(self) -> str:
        if self.request_id is None:
            self.request_id = uuid.uuid4().hex
        return self.request_id

    def failed(self, error: MlapiError) -> None:
        """Done with an error: a server error, or a timeout of the model's own run (not
        one that never left the queue), counts against the version."""
        outcome = outcome_of(error)
        blamed = outcome == "error" or (isinstance(error, GatewayTimeout) and not error.queued)
        self.done(error.status, outcome, blamed)

    def done(self, status: int, outcome: str, blamed: bool = False) -> None:
        seconds = time.perf_counter() - self.started
        tracking, model = self._tracking, self._model
        metrics = model.metrics if model is not None else None
        if model is not None:
            model.release(blamed, seconds)
        if self.counted:
            tracking.active -= 1
            if metrics is not None:
                metrics.inflight_count -= 1
        if metrics is not None:
            metrics.record(outcome, seconds, self.protocol, self.client)
            labels = metrics.labels
        else:
            labels = (self.name, "") if tracking.registry.knows(self.name) else UNKNOWN_MODEL
            tracking.metrics.requests.labels(*labels, outcome, self.protocol, self.client).inc()
        if tracking.log_all or (tracking.log_errors and status >= 400):
            log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "%s %s %d %.2fms",
                self.method,
                self.path[:200],
                status,
                seconds * 1000,
                extra={
                    "request_id": self.id(),
                    "client": self.client,
                    "model": labels[0] or None,
                    "version": labels[1] or None,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                },
            )
