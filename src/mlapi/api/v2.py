"""The Open Inference Protocol V2 REST data plane: server and model metadata,
readiness, and infer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi import __version__
from mlapi.api import codec
from mlapi.api.responses import json_response, route
from mlapi.batching import Gone
from mlapi.errors import NotReady
from mlapi.registry import ModelRegistry, ModelVersion
from mlapi.serving.context import ServingContext
from mlapi.serving.lane import OFFLOAD_BYTES, off_loop
from mlapi.serving.limits import Limits

EXTENSIONS = ["binary_tensor_data", "model_repository"]


async def run_infer(
    model: ModelVersion,
    body: bytes,
    header_length: str | None,
    limits: Limits,
    gone: Gone | None = None,
) -> tuple[bytes, int | None]:
    """Decode, infer, encode: the one infer path behind every V2 infer route. Returns
    the body and, when binary outputs follow the JSON, the JSON header's length.
    ``gone`` tells whether the client has disconnected (its queued work is dropped)."""
    # The hot path: small bodies are converted inline, with no extra coroutine.
    signature = model.signature
    if len(body) > OFFLOAD_BYTES:
        parsed = await off_loop(codec.parse_infer, body, header_length, signature, limits)
    else:
        parsed = codec.parse_infer(body, header_length, signature, limits)
    results = await model.infer(parsed.inputs, parsed.output_names, gone)
    if sum(array.nbytes for array in results.values()) > OFFLOAD_BYTES:
        return await off_loop(codec.render_infer, model.name, model.version, parsed, results)
    return codec.render_infer(model.name, model.version, parsed, results)


def metadata_of(registry: ModelRegistry, name: str, version: str | None) -> dict[str, object]:
    """A model's metadata (of one version when ``version`` is given)."""
    record = registry.record(name)
    served = registry.get(name, version)
    runtime = served.loaded_runtime()
    signature = runtime.signature
    versions = [str(served.version)] if version else [str(v) for v in sorted(record.versions)]
    body: dict[str, object] = {
        "name": served.name,
        "versions": versions,
        "platform": (served.config and served.config.platform) or runtime.platform,
        "inputs": [spec.as_metadata() for spec in signature.inputs],
        "outputs": [spec.as_metadata() for spec in signature.outputs],
    }
    if served.config is not None and served.config.labels:
        body["parameters"] = {"labels": list(served.config.labels)}
    return body


def routes(ctx: ServingContext) -> list[Route]:
    registry = ctx.registry

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "mlapi", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return json_response(metadata_of(registry, params["model"], params.get("version")))

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        try:
            registry.get(params["model"], params.get("version"))
        except NotReady as exc:
            return json_response({"ready": False, "error": exc.message}, 503)
        return json_response({"ready": True})

    guarded = ctx.auth
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
