"""The standard gRPC health service (``grpc.health.v1.Health``) on the gRPC port, for
the probes and balancers that speak it (Kubernetes' gRPC probes, grpc_health_probe,
Envoy): the same answer as ``/health``, by service name.

- ``""`` (the server) and ``inference.GRPCInferenceService``: SERVING when every
  model that should be served is READY and the server is not draining.
- a model's name: SERVING when that model has a READY version and the server is not
  draining; NOT_SERVING while it loads, failed or was unloaded.
- any other name: Check answers NOT_FOUND, Watch streams SERVICE_UNKNOWN.

Watch sends the status at once and again whenever it changes (looked at every
``poll_s``); it ends, after a last NOT_SERVING, when the server stops accepting
calls, so an open Watch never holds the shutdown. No key is needed, as for
``/health``, which names the models too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mlapi.errors import NotFound
from mlapi.rpc import messages
from mlapi.serving.context import ServingContext

SERVING: int = messages.HealthCheckResponse.SERVING
NOT_SERVING: int = messages.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = messages.HealthCheckResponse.SERVICE_UNKNOWN
_SERVER_NAMES = ("", messages.SERVICE)


class HealthService:
    def __init__(self, ctx: ServingContext, closing: asyncio.Event, poll_s: float = 0.5) -> None:
        self.ctx = ctx
        self._closing = closing
        self._poll_s = poll_s

    def status(self, service: str) -> int | None:
        """The service's status; None for a name that is neither the server nor a model."""
        ctx = self.ctx
        serving = not ctx.lifecycle.draining and not self._closing.is_set()
        if service in _SERVER_NAMES:
            return SERVING if serving and ctx.registry.readiness()[0] else NOT_SERVING
        if not ctx.registry.knows(service):
            return None
        try:
            ready = ctx.registry.record(service).is_ready
        except NotFound:  # unloaded through the repository API
            ready = False
        return SERVING if serving and ready else NOT_SERVING

    async def check(self, request: Any, context: Any, client: Any = None) -> Any:
        status = self.status(request.service)
        if status is None:
            raise NotFound(f"unknown service '{request.service[:200]}'")
        return messages.HealthCheckResponse(status=status)

    async def list(self, request: Any, context: Any, client: Any = None) -> Any:
        names = [*_SERVER_NAMES, *(record.name for record in self.ctx.registry.records())]
        return messages.HealthListResponse(
            statuses={
                name: messages.HealthCheckResponse(status=self.status(name) or SERVICE_UNKNOWN)
                for name in names
            }
        )

    async def watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        last = None
        while True:
            status = self.status(request.service)
            current = SERVICE_UNKNOWN if status is None else status
            if current != last:
                yield messages.HealthCheckResponse(status=current)
                last = current
            if self._closing.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._poll_s)
