"""asgi_app(settings): the ASGI callable uvicorn serves (api.fastpath.FastInfer:
the infer fast path, in front of the Starlette app of every other route), the
routes and one lifespan that scans the repository, loads the models in the
background (so liveness answers at once and readiness says what is loading), and
unloads them on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi import logs
from mlapi.api import health, openai, openapi, repository, scoring, v1, v2
from mlapi.api.fastpath import FastInfer
from mlapi.api.guard import HeaderRules, RequestGuard
from mlapi.api.responses import json_response, route
from mlapi.lifecycle import Lifecycle
from mlapi.observability.metrics import CONTENT_TYPE
from mlapi.registry import ModelRegistry
from mlapi.serving.access import Access, KeySettings
from mlapi.serving.context import ServingContext
from mlapi.serving.limits import Limits
from mlapi.serving.payloads import PayloadLog
from mlapi.serving.plane import Plane
from mlapi.serving.rates import Buckets
from mlapi.serving.tracking import Tracking
from mlapi.settings import Settings

if TYPE_CHECKING:
    from mlapi.rpc.server import GrpcFront


def asgi_app(
    settings: Settings,
    registry: ModelRegistry | None = None,
    lifecycle: Lifecycle | None = None,
) -> FastInfer:
    registry = registry or ModelRegistry(settings)
    lifecycle = lifecycle or Lifecycle()
    access = Access(
        KeySettings(settings.api_keys_file, settings.api_key, settings.admin_key),
        Buckets.for_workers(),
    )
    metrics = registry.metrics
    metrics.precreated_client = None if access.keyed else "anonymous"
    tracking = Tracking(metrics, registry, settings.access_log, settings.max_inflight)
    limits = Limits(settings.max_elements, settings.max_bytes_element, settings.max_tokens)
    payloads = PayloadLog(settings, metrics)
    plane = Plane(registry, tracking, access, limits, payloads)
    ctx = ServingContext(settings, registry, access, tracking, lifecycle, limits, plane)
    header_rules = HeaderRules(settings.max_header_bytes, settings.host_names)
    spec = openapi.document()

    async def openapi_json(request: Request) -> Response:
        return json_response(spec)

    def refresh_metrics() -> None:
        registry.publish_states()
        metrics.update_process(logs.WriteErrors.count)

    rendering: asyncio.Future[bytes] | None = None

    async def metrics_text(request: Request) -> Response:
        """Rendered off the event loop (400 models: 3.4 MB, 0.65 s of the GIL), and
        one render at a time: scrapes that come while one runs share its text."""
        nonlocal rendering
        if rendering is None:
            refresh_metrics()
            rendering = asyncio.ensure_future(asyncio.to_thread(metrics.expose))
            rendering.add_done_callback(_forget_rendering)
        body = await asyncio.shield(rendering)
        return Response(body, media_type=CONTENT_TYPE)

    def _forget_rendering(done: asyncio.Future[bytes]) -> None:
        nonlocal rendering
        rendering = None

    async def refresh_every(seconds: float) -> None:
        """Each worker keeps its own gauges fresh, since a scrape reaches only one."""
        while True:
            refresh_metrics()
            await asyncio.sleep(seconds)

    async def keys_every(seconds: float) -> None:
        """Each worker reads a changed keys file itself: a revoked key is refused by
        every worker within one poll."""
        while True:
            await asyncio.sleep(seconds)
            await asyncio.to_thread(access.refresh)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry.scan()
        loading = asyncio.create_task(registry.load_all(), name="mlapi-load-models")
        refresher = asyncio.create_task(refresh_every(1.0), name="mlapi-metrics")
        tending = asyncio.create_task(registry.tend(), name="mlapi-cache")
        tasks = [loading, refresher, tending]
        if settings.repository_poll_s > 0:

            async def watch() -> None:
                await loading  # the first load settles before any rollout
                await registry.watch(settings.repository_poll_s)

            tasks.append(asyncio.create_task(watch(), name="mlapi-repository-poll"))
        if settings.api_keys_file is not None:
            tasks.append(asyncio.create_task(keys_every(settings.keys_poll_s), name="mlapi-keys"))
        if settings.workers > 1:
            # Workers share one socket: a worker that accepted connections while
            # still loading would answer 503 beside ready siblings. So each worker
            # joins the pool only once its models have settled (ready or failed).
            await asyncio.shield(loading)
        grpc_front = await _start_grpc(ctx) if settings.grpc_port else None
        try:
            yield
        finally:
            if grpc_front is not None:  # calls in progress finish before models close
                await grpc_front.stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await registry.close()
            await asyncio.to_thread(payloads.close)

    app = Starlette(
        routes=[
            *health.routes(ctx),
            *v2.routes(ctx),
            *repository.routes(ctx),
            *openai.routes(ctx),
            *scoring.routes(ctx),
            *v1.routes(ctx),
            Route("/openapi.json", route(openapi_json), methods=["GET"]),
            Route("/metrics", route(metrics_text), methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
        middleware=[
            Middleware(RequestGuard, rules=header_rules),
        ],
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.lifecycle = lifecycle
    # Infer requests are answered in front of the framework: its error middleware
    # would only wrap each send in one more coroutine (FastInfer answers its own
    # errors), 2% of the CPU of a loaded server.
    return FastInfer(app, ctx=ctx, guard=header_rules)


async def _start_grpc(ctx: ServingContext) -> GrpcFront:
    """The gRPC front on API_GRPC_PORT, stopped with the HTTP server (drain included)."""
    from mlapi.rpc.server import GrpcFront  # grpc loads only where it serves

    front = GrpcFront(ctx)
    await front.start()
    ctx.lifecycle.on_close.append(front.stop)
    return front


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 rendered as the protocol's error body."""
    messages = {404: f"no route {request.url.path[:200]}", 405: "method not allowed"}
    headers = dict(exc.headers) if exc.headers else None
    return json_response(
        {"error": messages.get(exc.status_code, str(exc.detail))}, exc.status_code, headers
    )
