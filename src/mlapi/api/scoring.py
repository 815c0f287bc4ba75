"""Text scoring routes beside ``/v1/embeddings``, in the shapes the embedding servers
share: ``POST /v1/rerank`` (a cross-encoder scores a query against each document;
``query``, ``documents``, ``top_n``, ``return_documents``; ``results`` with each
document's ``index`` and ``relevance_score``, best first) and ``POST /v1/classify``
(a sequence classifier's labels and scores for each input, best first, ``top_k``
of them). Both go through the data plane as embeddings do: the same key, limits
(MLAPI_MAX_TOKENS counted before the request is queued), batcher, metrics, drain
and OpenAI-shaped errors. The texts are tokenized once, here, off the loop for
large bodies; the model runs on those ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlapi.api.calls import call_of
from mlapi.api.openai import (
    MAX_INPUTS,
    InvalidParameter,
    TextWire,
    _is_id,
    _rows,
    _token_rows,
    check_tokens,
    json_document,
    openai_error,
)
from mlapi.api.responses import route
from mlapi.registry.versions import ModelVersion
from mlapi.serving.context import ServingContext
from mlapi.serving.limits import Limits

_RERANK_KEYS = frozenset({"model", "query", "documents", "top_n", "return_documents", "user"})
_CLASSIFY_KEYS = frozenset({"model", "input", "top_k", "user"})


def text_runtime(version: ModelVersion, task: str) -> Any:
    """The text runtime of a model of ``task``; a 400 naming what the model is
    when it is another kind."""
    from mlapi.runtimes.text import TextRuntime

    runtime = version.runtime
    if isinstance(runtime, TextRuntime) and runtime.settings.task == task:
        return runtime
    kind = runtime.settings.task if isinstance(runtime, TextRuntime) else "not a text model"
    wants = {"rerank": "a reranker (cross-encoder)", "classification": "a text classifier"}[task]
    route_of = {"embedding": " (use /v1/embeddings)", "rerank": " (use /v1/rerank)"}
    raise InvalidParameter(
        f"model '{version.name[:128]}' is not {wants}: it is {kind}{route_of.get(kind, '')}",
        "model",
    )


def routes(ctx: ServingContext) -> list[Route]:
    max_body, plane = ctx.settings.max_body_bytes, ctx.plane

    async def rerank(request: Request) -> Response:
        wire = _RerankWire(request, max_body, ctx.limits)
        response: Response = await plane.infer(call_of(request.scope, None), wire)
        return response

    async def classify(request: Request) -> Response:
        wire = _ClassifyWire(request, max_body, ctx.limits)
        response: Response = await plane.infer(call_of(request.scope, None), wire)
        return response

    return [  # the key is the plane's to check, as for embeddings
        Route("/v1/rerank", route(rerank, None, openai_error), methods=["POST"]),
        Route("/v1/classify", route(classify, None, openai_error), methods=["POST"]),
    ]


@dataclass(slots=True)
class _Scored:
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]


class _BodyWire(TextWire):
    """A JSON body that names its model, checked against ``keys``."""

    keys: ClassVar[frozenset[str]] = frozenset()

    def model_of(self, body: bytes) -> tuple[str, str | None]:
        document = json_document(body, self.limits, self.keys)
        self.check(document)
        self.document = document
        return document["model"], None

    def check(self, document: dict[str, Any]) -> None:
        """The route's own fields, before the model is looked up."""


def _count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not _is_id(value) or value < 1:
        raise InvalidParameter(f"'{name}' must be a positive integer", name)
    return int(value)


class _RerankWire(_BodyWire):
    keys = _RERANK_KEYS

    def check(self, document: dict[str, Any]) -> None:
        query = document.get("query")
        if not isinstance(query, str) or not query:
            raise InvalidParameter("'query' must be a non-empty string", "query")
        documents = document.get("documents")
        if not isinstance(documents, list) or not documents:
            raise InvalidParameter("'documents' must be a non-empty array", "documents")
        if len(documents) > MAX_INPUTS:
            raise InvalidParameter(
                f"'documents' holds {len(documents)} items; at most {MAX_INPUTS}", "documents"
            )
        texts = []
        for index, item in enumerate(documents):
            if isinstance(item, dict) and set(item) == {"text"}:  # Cohere's older form
                item = item["text"]
            if not isinstance(item, str):
                raise InvalidParameter(
                    f'documents[{index}] must be a string (or {{"text": string}})', "documents"
                )
            texts.append(item)
        self.limits.check_elements("documents", len(query) * len(texts) + sum(map(len, texts)))
        document["documents"] = texts
        _count(document.get("top_n"), "top_n")
        if not isinstance(document.get("return_documents", False), bool):
            raise InvalidParameter("'return_documents' must be true or false", "return_documents")

    def decode(self, body: bytes, model: ModelVersion, limits: Limits) -> _Scored:
        runtime = text_runtime(model, "rerank")
        documents = self.document["documents"]
        queries = np.empty(len(documents), dtype=object)
        queries[:] = self.document["query"]
        texts = np.empty(len(documents), dtype=object)
        texts[:] = documents
        pairs = runtime.pair_ids(queries, texts, "documents")
        check_tokens(sum(len(ids) for ids, _ in pairs), limits, "documents")
        rows = np.empty(len(pairs), dtype=object)
        for index, pair in enumerate(pairs):  # (ids, types) stays one row
            rows[index] = pair
        return _Scored({"text": rows}, ("score", "tokens"))

    def encode(
        self, model: ModelVersion, decoded: _Scored, results: dict[str, np.ndarray]
    ) -> Response:
        scores = results["score"]
        # best first; equal scores keep the documents' order
        order = np.argsort(-scores, kind="stable")
        top_n = _count(self.document.get("top_n"), "top_n")
        if top_n is not None:
            order = order[:top_n]
        documents = self.document["documents"]
        give = self.document.get("return_documents", False)
        ranked = []
        for index in order.tolist():
            entry: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
            if give:
                entry["document"] = {"text": documents[index]}
            ranked.append(entry)
        return self.answer(
            {"object": "list", "model": model.name, "results": ranked}, results["tokens"]
        )


class _ClassifyWire(_BodyWire):
    keys = _CLASSIFY_KEYS

    def check(self, document: dict[str, Any]) -> None:
        if "input" not in document:
            raise InvalidParameter("'input' is required", "input")
        _count(document.get("top_k"), "top_k")

    def decode(self, body: bytes, model: ModelVersion, limits: Limits) -> _Scored:
        runtime = text_runtime(model, "classification")
        rows = _token_rows(runtime, _rows(self.document["input"], limits), limits)
        self.document["labels"] = runtime.label_names()
        return _Scored({"text": rows}, ("scores", "tokens"))

    def encode(
        self, model: ModelVersion, decoded: _Scored, results: dict[str, np.ndarray]
    ) -> Response:
        names = self.document["labels"]
        top_k = _count(self.document.get("top_k"), "top_k")
        data = []
        for index, scores in enumerate(results["scores"]):
            order = np.argsort(-scores, kind="stable")[:top_k]
            labels = [{"label": names[i], "score": float(scores[i])} for i in order.tolist()]
            data.append(
                {
                    "object": "classification",
                    "index": index,
                    "label": labels[0]["label"],
                    "score": labels[0]["score"],
                    "labels": labels,
                }
            )
        return self.answer({"object": "list", "model": model.name, "data": data}, results["tokens"])
