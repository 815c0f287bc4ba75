"""The OpenAPI 3.1 document of the server's own routes, written once by hand so it
says exactly what the server does (statuses, error bodies, auth)."""

from __future__ import annotations

from typing import Any

from mlapi import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "malformed or invalid request",
        401: "missing or wrong API key",
        403: "a Host a server without a key does not answer (MLAPI_ALLOWED_HOSTS); on the "
        "repository routes also a request from a web page, or the routes turned off",
        404: "unknown model or version",
        408: "headers or body too slow (MLAPI_HEADER_TIMEOUT_S, MLAPI_BODY_TIMEOUT_S)",
        413: "body over MLAPI_MAX_BODY_BYTES, or tensors over MLAPI_MAX_ELEMENTS",
        415: "unsupported Content-Encoding; on the repository routes a body that is not JSON",
        431: "headers over MLAPI_MAX_HEADER_BYTES",
        503: "model not ready, or the server at a limit (queue, requests, connections)",
        504: "the request's deadline passed (MLAPI_REQUEST_TIMEOUT_S): queued, running, or "
        "waiting for its on-demand model to load",
        507: "its on-demand model does not fit in memory now, or ever (both numbers in the body)",
    }
    return {str(code): _json(_ERROR, text[code]) for code in statuses}


_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
_LOAD_TIMING = {
    "Server-Timing": {
        "description": "load;dur=<ms>: what the request waited for its on-demand model to load",
        "schema": {"type": "string"},
    }
}


def _health(summary: str, ok: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {
                "200": _json({"type": "object"}, ok),
                "503": _json({"type": "object"}, "not ready; the body names each model's state"),
            },
        }
    }


def _infer_op(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Run inference (V2); JSON or binary tensor data extension",
            "parameters": [
                *params,
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                },
            ],
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}
                },
            },
            "responses": {
                "200": {
                    **_json({"$ref": "#/components/schemas/InferResponse"}, "inference result"),
                    "headers": _LOAD_TIMING,
                },
                **_errors(400, 401, 403, 404, 408, 413, 415, 431, 503, 504, 507),
            },
        }
    }


def _metadata_op(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "summary": "Model metadata",
            "parameters": params,
            "security": _SECURED,
            "responses": {
                "200": _json({"$ref": "#/components/schemas/ModelMetadata"}, "metadata"),
                **_errors(401, 403, 404, 503, 507),
            },
        }
    }


def _ready_op(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "summary": "Model readiness",
            "parameters": params,
            "security": _SECURED,
            "responses": {
                "200": _json({"type": "object"}, "ready (state READY, or LOADABLE: on demand)"),
                "503": _json({"type": "object"}, "not ready"),
                **_errors(401, 403, 404, 507),
            },
        }
    }


def _repository_op(
    summary: str, params: list[dict[str, Any]], ok: dict[str, Any]
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": params,
            "security": _SECURED,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {"200": _json(ok, "done"), **_errors(400, 401, 403, 404, 413, 415)},
        }
    }


def _tensor(with_data: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "parameters": {"type": "object"},
    }
    if with_data:
        properties["data"] = {"type": "array"}
    return {"type": "object", "required": ["name", "datatype", "shape"], "properties": properties}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    """Errors of the OpenAI-compatible routes, in OpenAI's shape (403 and 431 come
    before any route, from the request guard, in the protocol's)."""
    schema = {"$ref": "#/components/schemas/OpenAIError"}
    return {
        code: {**entry, "content": {"application/json": {"schema": schema}}}
        for code, entry in _errors(*statuses).items()
    }


def _text_or_ids() -> dict[str, Any]:
    """A text input of the OpenAI family: a string, strings, token ids, lists of them."""
    text = {"type": "string", "minLength": 1}
    ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    many = {"minItems": 1, "maxItems": 2048}
    return {
        "oneOf": [
            text,
            {"type": "array", "items": text, **many},
            ids,
            {"type": "array", "items": ids, **many},
        ]
    }


def _embeddings_op() -> dict[str, Any]:
    body = _text_body(
        ["input"],
        input=_text_or_ids(),
        encoding_format={"enum": ["float", "base64"]},
        dimensions={"type": "integer", "minimum": 1},
    )
    return _text_op("Embeddings of texts (OpenAI-compatible)", body, "embeddings and token usage")


def _text_body(required: list[str], **fields: Any) -> dict[str, Any]:
    """A text route's JSON body: ``model``, ``user`` and the route's own fields."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", *required],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            **fields,
            "user": {"type": "string"},
        },
    }


def _text_op(summary: str, body: dict[str, Any], answer: str) -> dict[str, Any]:
    """A text route of the OpenAI family (embeddings, rerank, classify)."""
    return {
        "post": {
            "summary": summary,
            "security": _SECURED,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {**_json({"type": "object"}, answer), "headers": _LOAD_TIMING},
                **_openai_errors(400, 401, 404, 408, 413, 415, 503, 504, 507),
                **_errors(403, 431),
            },
        }
    }


def _rerank_op() -> dict[str, Any]:
    text = {"type": "string"}
    wrapped = {
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {"text": text},
    }
    body = _text_body(
        ["query", "documents"],
        query={"type": "string", "minLength": 1},
        documents={
            "type": "array",
            "minItems": 1,
            "maxItems": 2048,
            "items": {"oneOf": [text, wrapped]},
        },
        top_n={"type": "integer", "minimum": 1},
        return_documents={"type": "boolean"},
    )
    return _text_op(
        "Documents ranked by a cross-encoder's relevance to a query",
        body,
        "results (index, relevance_score, document when asked), best first, and token usage",
    )


def _classify_op() -> dict[str, Any]:
    body = _text_body(["input"], input=_text_or_ids(), top_k={"type": "integer", "minimum": 1})
    return _text_op(
        "Labels and scores of texts from a sequence classifier",
        body,
        "each input's best label and score and its labels best first (top_k), and token usage",
    )


def document() -> dict[str, Any]:
    both = [_MODEL, _VERSION]
    return {
        "openapi": "3.1.0",
        "info": {"title": "ml-api", "version": __version__},
        "paths": {
            "/health": _health("Readiness: 200 when every model is loaded and warmed", "ready"),
            "/health/ready": _health("Readiness (same as /health)", "ready"),
            "/health/live": _health("Liveness: 200 while the process answers", "alive"),
            "/v2/health/ready": _health("V2 server readiness", "ready"),
            "/v2/health/live": _health("V2 server liveness", "alive"),
            "/v2": {
                "get": {
                    "summary": "Server metadata",
                    "responses": {"200": _json({"type": "object"}, "metadata")},
                }
            },
            "/v2/models/{model}": _metadata_op([_MODEL]),
            "/v2/models/{model}/versions/{version}": _metadata_op(both),
            "/v2/models/{model}/ready": _ready_op([_MODEL]),
            "/v2/models/{model}/versions/{version}/ready": _ready_op(both),
            "/v2/models/{model}/infer": _infer_op([_MODEL]),
            "/v2/models/{model}/versions/{version}/infer": _infer_op(both),
            "/v2/repository/index": _repository_op(
                "List the models in the repository", [], {"type": "array"}
            ),
            "/v2/repository/models/{model}/load": _repository_op(
                "Load or reload a model from disk", [_MODEL], {"type": "object"}
            ),
            "/v2/repository/models/{model}/unload": _repository_op(
                "Unload a model", [_MODEL], {"type": "object"}
            ),
            "/v1/models/{model}:predict": {
                "post": {
                    "summary": "KServe V1 predict",
                    "parameters": [_MODEL],
                    "security": _SECURED,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["instances"],
                                    "properties": {"instances": {"type": "array"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            **_json({"type": "object"}, "predictions"),
                            "headers": _LOAD_TIMING,
                        },
                        **_errors(400, 401, 403, 404, 408, 413, 415, 431, 503, 504, 507),
                    },
                }
            },
            "/v1/models/{model}": _ready_op([_MODEL]),
            "/v1/embeddings": _embeddings_op(),
            "/v1/rerank": _rerank_op(),
            "/v1/classify": _classify_op(),
            "/v1/models": {
                "get": {
                    "summary": "The embedding models (OpenAI-compatible)",
                    "security": _SECURED,
                    "responses": {
                        "200": _json({"type": "object"}, "list of models"),
                        **_openai_errors(401),
                        **_errors(403, 431),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI document")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "OpenAIError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _tensor(True)},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": _tensor(True)},
                    },
                },
                "ModelMetadata": {
                    "type": "object",
                    "required": ["name", "platform", "inputs", "outputs"],
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {"type": "array", "items": _tensor(False)},
                        "outputs": {"type": "array", "items": _tensor(False)},
                    },
                },
            },
        },
    }
