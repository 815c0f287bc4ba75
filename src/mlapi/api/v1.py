"""The KServe V1 predict route: ``{"instances": [...]}`` in, ``{"predictions": [...]}``
out. Instances are rows of the model's one input, or objects keyed by input name."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi.api import codec
from mlapi.api.body import read_body
from mlapi.api.calls import call_of, disconnect_probe
from mlapi.api.responses import client_of, json_response, route, server_timing
from mlapi.errors import BadRequest, NotReady
from mlapi.registry import Cold, ModelVersion
from mlapi.serving import codec as serving_codec
from mlapi.serving.context import ServingContext
from mlapi.serving.limits import Limits
from mlapi.serving.plane import Wire
from mlapi.tensors import Signature, TensorSpec


def routes(ctx: ServingContext) -> list[Route]:
    registry, max_body, plane = ctx.registry, ctx.settings.max_body_bytes, ctx.plane

    async def predict(request: Request) -> Response:
        call = call_of(request.scope, request.path_params["model"])
        response: Response = await plane.infer(call, _V1Wire(request, max_body))
        return response

    async def status(request: Request) -> Response:
        name = request.path_params["model"]
        ctx.access.check_model(client_of(request), name)
        try:
            registry.get(name)
        except Cold:  # on demand: a request loads it
            return json_response({"name": name, "ready": True, "state": "LOADABLE"})
        except NotReady:
            return json_response({"name": name, "ready": False}, 503)
        return json_response({"name": name, "ready": True})

    return [
        # predict's key is the plane's to check, with everything else it checks
        Route("/v1/models/{model}:predict", route(predict), methods=["POST"]),
        Route("/v1/models/{model}", route(status, ctx.access), methods=["GET"]),
    ]


@dataclass(slots=True)
class _Instances:
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    count: int  # instances in the request: the predictions' rows


class _V1Wire(Wire):
    """KServe V1: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out."""

    __slots__ = ("gone", "max_body", "request")

    def __init__(self, request: Request, max_body: int) -> None:
        self.request, self.max_body = request, max_body
        self.gone = disconnect_probe(request.receive)

    def read(self) -> Awaitable[bytes]:
        return read_body(self.request, self.max_body)

    def decode(self, body: bytes, model: ModelVersion, limits: Limits) -> _Instances:
        signature = model.signature
        inputs, count = _decode(body, signature, limits)
        return _Instances(inputs, signature.output_names(), count)

    def encode(
        self, model: ModelVersion, decoded: _Instances, results: dict[str, np.ndarray]
    ) -> Response:
        response = _encode(results, decoded.count)
        response.headers.update(server_timing(self.loaded_s))
        return response


def _decode(body: bytes, signature: Signature, limits: Limits) -> tuple[dict[str, np.ndarray], int]:
    """The model's inputs from a V1 body, and how many instances it holds."""
    limits.check_json(body)
    document = codec.loads_json(body)
    if not isinstance(document, dict) or set(document) != {"instances"}:
        raise BadRequest("the request body must be an object with only 'instances'")
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty array")
    return _inputs(signature, instances, limits), len(instances)


def _encode(results: dict[str, np.ndarray], count: int) -> Response:
    return json_response({"predictions": _predictions(results, count)})


def _inputs(signature: Signature, instances: list[Any], limits: Limits) -> dict[str, np.ndarray]:
    if signature.dynamic or not signature.inputs:
        raise BadRequest("V1 predict needs a model with declared inputs; use the V2 infer route")
    if len(signature.inputs) == 1 and not isinstance(instances[0], dict):
        spec = signature.inputs[0]
        return {spec.name: _rows(spec, instances, 0, limits)}
    if not all(isinstance(item, dict) for item in instances):
        raise BadRequest("with several inputs, each instance must be an object keyed by input name")
    expected = {spec.name for spec in signature.inputs}
    for index, item in enumerate(instances):
        if set(item) != expected:
            raise BadRequest(f"instances[{index}] must have exactly the keys {sorted(expected)}")
    inputs: dict[str, np.ndarray] = {}
    elements = 0
    for spec in signature.inputs:
        array = _rows(spec, [item[spec.name] for item in instances], elements, limits)
        inputs[spec.name] = array
        elements += array.size
    return inputs


def _rows(spec: TensorSpec, rows: list[Any], elements: int, limits: Limits) -> np.ndarray:
    try:
        dims = np.shape(rows) if spec.datatype != "BYTES" else np.asarray(rows, dtype=object).shape
    except ValueError:
        raise BadRequest(f"instances for input '{spec.name}' are not a regular array") from None
    if not spec.accepts_shape(tuple(dims)):
        raise BadRequest(
            f"instances for input '{spec.name}' have shape {list(dims)}, the model expects "
            f"{list(spec.shape)} (-1: any size)"
        )
    limits.check_elements(spec.name, elements + math.prod(dims))
    return codec.array_from_json(spec.name, spec.datatype, tuple(dims), rows, limits)


def _predictions(results: dict[str, np.ndarray], count: int) -> Any:
    listed = {name: _listed(name, array) for name, array in results.items()}
    if len(listed) == 1:
        return next(iter(listed.values()))
    if all(len(array.shape) >= 1 and array.shape[0] == count for array in results.values()):
        return [{name: values[row] for name, values in listed.items()} for row in range(count)]
    return listed


def _listed(name: str, array: np.ndarray) -> Any:
    """Rows of an output; numbers stay numpy so orjson writes them at their own
    precision (an FP32 0.1 is written as 0.1, not 0.10000000149011612)."""
    if array.dtype.kind in "OUS":
        flat = [serving_codec.text(name, item) for item in array.ravel().tolist()]
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist()
    return np.ascontiguousarray(array)
