"""The Open Inference Protocol V2 REST data plane: server and model metadata,
readiness, and infer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi import __version__
from mlapi.api import codec
from mlapi.api.body import read_body
from mlapi.api.context import ApiContext
from mlapi.api.responses import json_response, route
from mlapi.errors import NotReady
from mlapi.registry import ModelVersion

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def routes(ctx: ApiContext) -> list[Route]:
    registry, max_body = ctx.registry, ctx.settings.max_body_bytes

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "mlapi", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        record = registry.record(params["model"])
        version = registry.get(params["model"], params.get("version"))
        signature = version.signature
        assert version.runtime is not None
        versions = [str(v) for v in sorted(record.versions)]
        body: dict[str, object] = {
            "name": version.name,
            "versions": versions if "version" not in params else [str(version.version)],
            "platform": (version.config and version.config.platform) or version.runtime.platform,
            "inputs": [spec.as_metadata() for spec in signature.inputs],
            "outputs": [spec.as_metadata() for spec in signature.outputs],
        }
        if version.config is not None and version.config.labels:
            body["parameters"] = {"labels": list(version.config.labels)}
        return json_response(body)

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        try:
            registry.get(params["model"], params.get("version"))
        except NotReady as exc:
            return json_response({"ready": False, "error": exc.message}, 503)
        return json_response({"ready": True})

    async def infer(request: Request) -> Response:
        params = request.path_params
        model: ModelVersion = registry.get(params["model"], params.get("version"))
        body = await read_body(request, max_body)
        parsed = codec.parse_infer(
            body, request.headers.get("inference-header-content-length"), model.signature
        )
        results = await model.infer(parsed.inputs, parsed.output_names)
        content, header_length = codec.render_infer(model.name, model.version, parsed, results)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    guarded = ctx.auth
    base = "/v2/models/{model}"
    versioned = base + "/versions/{version}"
    return [
        Route("/v2", route(server_metadata), methods=["GET"]),
        Route(base, route(model_metadata, guarded), methods=["GET"]),
        Route(versioned, route(model_metadata, guarded), methods=["GET"]),
        Route(base + "/ready", route(model_ready, guarded), methods=["GET"]),
        Route(versioned + "/ready", route(model_ready, guarded), methods=["GET"]),
        Route(base + "/infer", route(infer, guarded), methods=["POST"]),
        Route(versioned + "/infer", route(infer, guarded), methods=["POST"]),
    ]
