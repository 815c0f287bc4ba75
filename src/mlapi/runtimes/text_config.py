"""What a text model folder says about itself: the ``[text]`` table of model.toml,
else the files sentence-transformers and Hugging Face write beside the weights
(``1_Pooling/config.json``, ``modules.json``, ``sentence_bert_config.json``,
``config.json``), else defaults. Only JSON and TOML are read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlapi.errors import ModelLoadError

_KEYS = {
    "task",
    "pooling",
    "normalize",
    "max_length",
    "truncate",
    "token_budget",
    "max_padding",
    "dimensions",
}
DEFAULT_MAX_LENGTH = 512
DEFAULT_TOKEN_BUDGET = 16384
# A pass pads to at most 1.1x its real tokens: all-MiniLM-L6-v2 on one core, batches of
# 64 sentences of 5 to 40 words, encoded 1.7x faster than in one pass (padded 1.7x the
# real tokens); 1.05 to 1.15 and 2 to 8 rows a pass within noise of each other
# (bench/text_passes.py --sweep; README, "Text embeddings").
DEFAULT_MAX_PADDING = 1.1


@dataclass(frozen=True)
class TextSettings:
    task: Literal["embedding", "classification", "rerank"]
    pooling: Literal["mean", "cls"]
    normalize: bool
    max_length: int
    truncate: bool
    token_budget: int  # tokens (padding included) one pass of the encoder may take
    max_padding: float  # a pass's padded tokens at most this times its real ones
    dimensions: tuple[int, ...]  # sizes a caller may cut embeddings to; () = none
    labels: tuple[str, ...] | None


def _json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelLoadError(f"{name} is not valid JSON") from None
    return data if isinstance(data, dict) else {}


def read(
    folder: Path, table: dict[str, Any] | None, labels: tuple[str, ...] | None
) -> TextSettings:
    given = dict(table or {})
    unknown = set(given) - _KEYS
    if unknown:
        raise ModelLoadError(f"model.toml [text]: unknown key(s) {sorted(unknown)}")
    pooling_file = _json(folder, "1_Pooling/config.json")
    modules = (
        (folder / "modules.json").read_text(encoding="utf-8")
        if (folder / "modules.json").is_file()
        else ""
    )
    bert = _json(folder, "sentence_bert_config.json")
    hf = _json(folder, "config.json")
    classifier = any(
        str(a).endswith("ForSequenceClassification") for a in hf.get("architectures", [])
    )
    # a sequence classifier of one output is a cross-encoder: it scores pairs
    classes = len(hf.get("id2label") or {}) or hf.get("num_labels", 2)
    default_task = "embedding" if not classifier else "rerank" if classes == 1 else "classification"
    task = given.get("task", default_task)
    pooling = given.get("pooling", "cls" if pooling_file.get("pooling_mode_cls_token") else "mean")
    max_length = given.get(
        "max_length",
        bert.get("max_seq_length") or hf.get("max_position_embeddings") or DEFAULT_MAX_LENGTH,
    )
    if task not in ("embedding", "classification", "rerank"):
        raise ModelLoadError(
            "model.toml [text] task must be 'embedding', 'classification' or 'rerank'"
        )
    if pooling not in ("mean", "cls"):
        raise ModelLoadError("model.toml [text] pooling must be 'mean' or 'cls'")
    dimensions = given.get("dimensions", [])
    if not isinstance(dimensions, list) or not all(
        isinstance(d, int) and d > 0 for d in dimensions
    ):
        raise ModelLoadError("model.toml [text] dimensions must be a list of positive sizes")
    for key in ("max_length", "token_budget"):
        value = given.get(key, max_length if key == "max_length" else DEFAULT_TOKEN_BUDGET)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelLoadError(f"model.toml [text] {key} must be a positive integer")
    max_padding = given.get("max_padding", DEFAULT_MAX_PADDING)
    if not isinstance(max_padding, int | float) or isinstance(max_padding, bool) or max_padding < 1:
        raise ModelLoadError("model.toml [text] max_padding must be a number of 1 or more")
    for key in ("normalize", "truncate"):
        if key in given and not isinstance(given[key], bool):
            raise ModelLoadError(f"model.toml [text] {key} must be true or false")
    if labels is None and task == "classification":
        id2label = hf.get("id2label") or {}
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else None
    return TextSettings(
        task=task,
        pooling=pooling,
        normalize=bool(given.get("normalize", "Normalize" in modules)),
        max_length=int(max_length),
        truncate=bool(given.get("truncate", True)),
        token_budget=int(given.get("token_budget", DEFAULT_TOKEN_BUDGET)),
        max_padding=float(max_padding),
        dimensions=tuple(sorted(set(dimensions))),
        labels=labels,
    )
