"""The Open Inference Protocol V2 REST routes: server and model metadata and
readiness (infer is answered by api.fastpath, in front of the router)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi import __version__
from mlapi.api.responses import client_of, json_response, route
from mlapi.errors import NotReady
from mlapi.registry import Cold, State
from mlapi.serving.context import ServingContext
from mlapi.serving.metadata import EXTENSIONS, metadata_of


def routes(ctx: ServingContext) -> list[Route]:
    registry, access = ctx.registry, ctx.access

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "mlapi", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        access.check_model(client_of(request), params["model"])
        return json_response(await metadata_of(registry, params["model"], params.get("version")))

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        access.check_model(client_of(request), params["model"])
        try:
            registry.get(params["model"], params.get("version"))
        except Cold:  # on demand: a request loads it
            return json_response({"ready": True, "state": State.LOADABLE.value})
        except NotReady as exc:
            return json_response({"ready": False, "error": exc.message}, 503)
        return json_response({"ready": True, "state": State.READY.value})

    guarded = ctx.access
    base = "/v2/models/{model}"
    versioned = base + "/versions/{version}"
    return [
        Route("/v2", route(server_metadata), methods=["GET"]),
        Route(base, route(model_metadata, guarded), methods=["GET"]),
        Route(versioned, route(model_metadata, guarded), methods=["GET"]),
        Route(base + "/ready", route(model_ready, guarded), methods=["GET"]),
        Route(versioned + "/ready", route(model_ready, guarded), methods=["GET"]),
        # .../infer is answered by api.fastpath.FastInfer, in front of the router.
    ]
