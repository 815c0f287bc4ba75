"""The V2 model repository extension: index, load, unload. These routes change what
is served, so they take the admin key when one is set (MLAPI_ADMIN_KEY, else the
API key), refuse requests from web pages, and can be turned off altogether
(MLAPI_REPOSITORY_API=false)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi.api.body import read_body
from mlapi.api.codec import loads_json
from mlapi.api.guard import check_not_cross_site
from mlapi.api.responses import json_response, route
from mlapi.errors import BadRequest, Forbidden, InsufficientMemory, ModelLoadError
from mlapi.registry import ModelRegistry, State
from mlapi.serving.context import ServingContext
from mlapi.settings import Settings

_MAX_CONTROL_BODY = 64 * 1024


def check_enabled(settings: Settings) -> None:
    if not settings.repository_api:
        raise Forbidden("the repository API is turned off (MLAPI_REPOSITORY_API=false)")


def index_items(registry: ModelRegistry, ready_only: bool) -> list[dict[str, object]]:
    """Every version of every model, with its state (and reason, when it has one)."""
    items = [
        item for record in registry.records() for item in record.describe(with_candidates=True)
    ]
    if ready_only:
        items = [item for item in items if item["state"] == State.READY.value]
    return items


async def load_model(registry: ModelRegistry, name: str) -> None:
    """Load (or roll out) a model; an error that says why when any version failed."""
    record = await registry.load(name)
    failed = [c for c in record.candidates.values() if c.state is State.FAILED]
    if record.rollout_error:
        raise ModelLoadError(
            f"failed to load '{record.name}': {record.rollout_error}; "
            f"the versions that served keep serving"
        )
    if record.is_ready and not failed:
        return
    if failed:  # what served before keeps serving
        reasons = "; ".join(f"version {c.version}: {c.reason}" for c in failed)
        kept = "; the versions that served keep serving" if record.serves() else ""
        error = InsufficientMemory if all(c.refused for c in failed) else ModelLoadError
        raise error(f"failed to load '{record.name}': {reasons}{kept}")
    reasons = "; ".join(str(item.get("reason", item["state"])) for item in record.describe())
    refused = any(v.refused for v in record.versions.values())
    raise (InsufficientMemory if refused else ModelLoadError)(
        f"failed to load '{record.name}': {reasons}"
    )


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
        return json_response(index_items(registry, ready_only))

    async def load(request: Request) -> Response:
        await _options(request)
        name = request.path_params["model"]
        await load_model(registry, name)
        return json_response({"name": name, "state": State.READY.value})

    async def unload(request: Request) -> Response:
        await _options(request)
        await registry.unload(request.path_params["model"])
        return json_response(
            {"name": request.path_params["model"], "state": State.UNAVAILABLE.value}
        )

    guarded = ctx.admin_auth
    return [
        Route("/v2/repository/index", route(index, guarded), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", route(load, guarded), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", route(unload, guarded), methods=["POST"]),
    ]
