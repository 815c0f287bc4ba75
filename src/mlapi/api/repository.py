"""The V2 model repository extension: index, load, unload. These routes change what
is served, so they take an admin key where keys are set (an API_KEYS_FILE entry with
``admin = true``, MLAPI_ADMIN_KEY, else the API key), each for the models its key
covers (the index lists only those), refuse requests from web pages, and can be
turned off altogether (MLAPI_REPOSITORY_API=false)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi.api.body import read_body
from mlapi.api.codec import loads_json
from mlapi.api.guard import check_not_cross_site
from mlapi.api.responses import client_of, json_response, route
from mlapi.errors import BadRequest
from mlapi.registry import State
from mlapi.serving.context import ServingContext
from mlapi.serving.repository import check_enabled, index_items, load_model

_MAX_CONTROL_BODY = 64 * 1024


def routes(ctx: ServingContext) -> list[Route]:
    registry = ctx.registry

    async def _options(request: Request) -> dict[str, object]:
        check_enabled(ctx.settings)
        check_not_cross_site(request.scope["headers"])
        body = await read_body(request, _MAX_CONTROL_BODY)
        if not body.strip():
            return {}
        document = loads_json(body)
        if not isinstance(document, dict):
            raise BadRequest("the request body must be a JSON object")
        return document

    async def index(request: Request) -> Response:
        options = await _options(request)
        ready_only = options.get("ready", False)
        if not isinstance(ready_only, bool):
            raise BadRequest("'ready' must be a boolean")
        client = client_of(request)
        items = index_items(registry, ready_only)
        return json_response([item for item in items if client.may_call(str(item["name"]))])

    async def load(request: Request) -> Response:
        await _options(request)
        name = request.path_params["model"]
        ctx.access.check_model(client_of(request), name)
        await load_model(registry, name)
        return json_response({"name": name, "state": State.READY.value})

    async def unload(request: Request) -> Response:
        await _options(request)
        ctx.access.check_model(client_of(request), request.path_params["model"])
        await registry.unload(request.path_params["model"])
        return json_response(
            {"name": request.path_params["model"], "state": State.UNAVAILABLE.value}
        )

    access = ctx.access
    return [
        Route("/v2/repository/index", route(index, access, admin=True), methods=["POST"]),
        Route(
            "/v2/repository/models/{model}/load", route(load, access, admin=True), methods=["POST"]
        ),
        Route(
            "/v2/repository/models/{model}/unload",
            route(unload, access, admin=True),
            methods=["POST"],
        ),
    ]
