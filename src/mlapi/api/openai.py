"""OpenAI-compatible routes for text models: ``POST /v1/embeddings`` (what the
OpenAI client libraries call) and ``GET /v1/models`` (the models it serves). Same
API key, limits, batcher, metrics and drain as every route; errors in OpenAI's
shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import base64
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
from mlapi.api.responses import client_of, error_headers, json_response, route, server_timing
from mlapi.errors import BadRequest, MlapiError, NotFound, NotReady
from mlapi.registry.versions import Cold, ModelVersion
from mlapi.serving.context import ServingContext
from mlapi.serving.limits import Limits
from mlapi.serving.plane import Wire

MAX_INPUTS = 2048  # OpenAI's own limit on one request's inputs
_KEYS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
_CODES = {
    401: "invalid_api_key",
    404: "model_not_found",
    413: "request_too_large",
    429: "rate_limit_exceeded",
}


class InvalidParameter(BadRequest):
    """A 400 that names the request field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


_TYPES = {429: "requests"}  # OpenAI's type for a rate limit


def openai_error(error: MlapiError) -> Response:
    body = {
        "error": {
            "message": error.message,
            "type": _TYPES.get(error.status)
            or ("invalid_request_error" if error.status < 500 else "server_error"),
            "param": getattr(error, "param", None),
            "code": _CODES.get(error.status, error.code),
        }
    }
    return json_response(body, error.status, error_headers(error) or None)


def embedding_model(version: ModelVersion) -> Any:
    """The text runtime of an embedding model, or None."""
    from mlapi.runtimes.text import TextRuntime

    runtime = version.runtime
    if isinstance(runtime, TextRuntime) and runtime.settings.task == "embedding":
        return runtime
    return None


def _embeds(version: ModelVersion) -> bool:
    """Whether a model not loaded here is an embedding model: the text runtime would
    load its files, and its settings (model.toml, the folder's config) say embedding."""
    from mlapi.runtimes import catalog, text_config

    config = version.config
    if config is None:
        return False
    try:
        if catalog.choose(version.path, config)[0] != "text":
            return False
        return text_config.read(version.path, config.text, config.labels).task == "embedding"
    except (MlapiError, OSError):
        return False


def routes(ctx: ServingContext) -> list[Route]:
    registry, max_body, plane = ctx.registry, ctx.settings.max_body_bytes, ctx.plane

    async def embeddings(request: Request) -> Response:
        call = call_of(request.scope, None)  # the body names the model
        wire = _EmbeddingsWire(request, max_body, ctx.limits)
        response: Response = await plane.infer(call, wire)
        return response

    async def models(request: Request) -> Response:
        listed = []
        client = client_of(request)
        for record in registry.records():
            if not client.may_call(record.name):
                continue
            try:
                version = registry.get(record.name)
            except Cold:  # on demand, not loaded here: what its model.toml says
                if any(_embeds(v) for v in record.versions.values()):
                    listed.append(
                        {"id": record.name, "object": "model", "created": 0, "owned_by": "ml-api"}
                    )
                continue
            except (NotFound, NotReady):
                continue
            if embedding_model(version) is not None:
                listed.append(
                    {"id": record.name, "object": "model", "created": 0, "owned_by": "ml-api"}
                )
        return json_response({"object": "list", "data": listed})

    return [
        # embeddings' key is the plane's to check, with everything else it checks
        Route("/v1/embeddings", route(embeddings, None, openai_error), methods=["POST"]),
        Route("/v1/models", route(models, ctx.access, openai_error), methods=["GET"]),
    ]


@dataclass(slots=True)
class _Texts:
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    dimensions: int | None
    normalize: bool


class TextWire(Wire):
    """A JSON request to a text route: the model is named in the body, so the plane
    asks ``model_of`` once the body is read (the in-flight room was checked before)."""

    __slots__ = ("document", "gone", "limits", "max_body", "request")

    def __init__(self, request: Request, max_body: int, limits: Limits) -> None:
        self.request, self.max_body, self.limits = request, max_body, limits
        self.document: dict[str, Any] = {}
        self.gone = disconnect_probe(request.receive)

    def read(self) -> Awaitable[bytes]:
        return read_body(self.request, self.max_body)

    cost_per_byte = 8  # tokenizing costs more than parsing: off the loop sooner

    def answer(self, body: dict[str, Any], tokens: np.ndarray) -> Response:
        """The JSON answer with its token usage (and load timing, where it waited)."""
        used = int(tokens.sum())
        body["usage"] = {"prompt_tokens": used, "total_tokens": used}
        response = json_response(body)
        response.headers.update(server_timing(self.loaded_s))
        return response


class _EmbeddingsWire(TextWire):
    """OpenAI's embeddings request."""

    def model_of(self, body: bytes) -> tuple[str, str | None]:
        self.document = _document(body, self.limits)
        return self.document["model"], None

    def decode(self, body: bytes, model: ModelVersion, limits: Limits) -> _Texts:
        runtime = embedding_model(model)
        if runtime is None:
            raise InvalidParameter(f"model '{model.name[:128]}' does not make embeddings", "model")
        document = self.document
        rows = _token_rows(runtime, _rows(document["input"], limits), limits)
        dimensions = _dimensions(document.get("dimensions"), runtime)
        return _Texts(
            {"text": rows}, ("embedding", "tokens"), dimensions, runtime.settings.normalize
        )

    def encode(
        self, model: ModelVersion, decoded: _Texts, results: dict[str, np.ndarray]
    ) -> Response:
        data = _encode(
            results["embedding"],
            self.document.get("encoding_format") or "float",
            decoded.dimensions,
            decoded.normalize,
        )
        return self.answer({"object": "list", "data": data, "model": model.name}, results["tokens"])


def _token_rows(runtime: Any, rows: np.ndarray, limits: Limits) -> np.ndarray:
    """The rows as token ids, once the request's tokens are counted against
    MLAPI_MAX_TOKENS (each input is held to the model's max_length by the runtime):
    a request that would keep the encoder busy for minutes is a 400, before it is
    queued. The model then runs on these ids, with no second tokenizing."""
    ids = runtime.token_ids(rows)
    check_tokens(sum(map(len, ids)), limits, "input")
    tokens = np.empty(len(ids), dtype=object)
    for index, row in enumerate(ids):  # a list of ids stays one row, not a numpy axis
        tokens[index] = row
    return tokens


def check_tokens(total: int, limits: Limits, param: str) -> None:
    """A text request's tokens against MLAPI_MAX_TOKENS: a 400 naming ``param``."""
    if total > limits.max_tokens:
        what = "inputs" if param == "input" else param
        raise InvalidParameter(
            f"'{param}' holds {total} tokens, over the limit of {limits.max_tokens} per request "
            f"(MLAPI_MAX_TOKENS): send fewer or shorter {what} per request",
            param,
        )


def json_document(body: bytes, limits: Limits, keys: frozenset[str]) -> dict[str, Any]:
    """A text route's JSON body: an object of ``keys`` only, naming its model, with
    ``user`` a string where given."""
    limits.check_json(body)
    document = codec.loads_json(body)
    if not isinstance(document, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(document) - keys)
    if unknown:
        raise InvalidParameter(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if not isinstance(document.get("model"), str) or not document["model"]:
        raise InvalidParameter("'model' must be the name of a model", "model")
    if not isinstance(document.get("user", ""), str):
        raise InvalidParameter("'user' must be a string", "user")
    return document


def _document(body: bytes, limits: Limits) -> dict[str, Any]:
    document = json_document(body, limits, _KEYS)
    if "input" not in document:
        raise InvalidParameter("'input' is required", "input")
    if document.get("encoding_format") not in (None, "float", "base64"):
        raise InvalidParameter("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return document


def _rows(given: Any, limits: Limits) -> np.ndarray:
    """One string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(given, str):
        items: list[Any] = [given]
    elif isinstance(given, list) and given and all(_is_id(x) for x in given):
        items = [given]
    elif isinstance(given, list):
        items = given
    else:
        raise InvalidParameter("'input' must be a string or an array", "input")
    if not items:
        raise InvalidParameter("'input' must not be empty", "input")
    if len(items) > MAX_INPUTS:
        raise InvalidParameter(f"'input' holds {len(items)} items; at most {MAX_INPUTS}", "input")
    total = 0
    for index, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise InvalidParameter(f"input[{index}] is an empty string", "input")
            total += len(item)
        elif isinstance(item, list) and item and all(_is_id(x) for x in item):
            total += len(item)
        else:
            raise InvalidParameter(
                f"input[{index}] must be a non-empty string or array of token ids", "input"
            )
    limits.check_elements("input", total)
    rows = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):  # a list of ids stays one row, not a numpy axis
        rows[index] = item if isinstance(item, str) else [int(token) for token in item]
    return rows


def _is_id(value: Any) -> bool:
    """An integer (JSON's 8.0 is one too, as JSON Schema says)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _dimensions(value: Any, runtime: Any) -> int | None:
    if value is None:
        return None
    if not _is_id(value) or value < 1:
        raise InvalidParameter("'dimensions' must be a positive integer", "dimensions")
    value = int(value)
    allowed = runtime.settings.dimensions
    if not allowed:
        raise InvalidParameter(
            "this model does not support 'dimensions' (its model.toml [text] lists none)",
            "dimensions",
        )
    if value not in allowed:
        raise InvalidParameter(
            f"'dimensions' must be one of {list(allowed)} for this model", "dimensions"
        )
    return int(value)


def _encode(
    vectors: np.ndarray, encoding: str, dimensions: int | None, normalize: bool
) -> list[dict[str, Any]]:
    if dimensions is not None:
        vectors = np.ascontiguousarray(vectors[:, :dimensions])
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    vectors = vectors.astype("<f4", copy=False)
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        embedding: Any = (
            base64.b64encode(vector.tobytes()).decode("ascii") if encoding == "base64" else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return data
