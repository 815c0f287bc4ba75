"""Health: liveness (the process answers) and readiness (every model that should
be served is loaded and warmed up). Never behind the API key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi.api.responses import json_response, route
from mlapi.serving.context import ServingContext


def routes(ctx: ServingContext) -> list[Route]:
    registry = ctx.registry

    async def live(request: Request) -> Response:
        return json_response({"status": "alive"})

    async def ready(request: Request) -> Response:
        is_ready, models = registry.readiness()
        if ctx.lifecycle.draining:
            return json_response({"status": "draining", "models": models}, 503)
        if is_ready:
            return json_response({"status": "ready", "models": models})
        return json_response({"status": "not ready", "models": models}, 503)

    return [
        Route("/health", route(ready), methods=["GET"]),
        Route("/health/ready", route(ready), methods=["GET"]),
        Route("/health/live", route(live), methods=["GET"]),
        Route("/v2/health/ready", route(ready), methods=["GET"]),
        Route("/v2/health/live", route(live), methods=["GET"]),
    ]
