"""A sentence-transformers (or Hugging Face) folder to a text model version: the
encoder exported to ONNX from its safetensors weights (never a pickle), its
``tokenizer.json`` beside it, and a model.toml that spells out the pooling,
normalisation and maximum length the folder's own config files give. Before it is
published, the exported model is served by the text runtime itself on sample
sentences and compared with the original in torch: it is refused unless every
embedding is within ``checks.MIN_COSINE`` of the original (a classifier: same labels,
scores within ``checks.SCORE_TOLERANCE``)."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlapi.errors import ConfigError
from mlapi.importers import checks
from mlapi.repository.config import ModelConfig
from mlapi.runtimes import text_config
from mlapi.runtimes.base import LoadContext

SAMPLES = (
    "The quick brown fox jumps over the lazy dog.",
    "ml-api serves models.",
    "A much longer sentence, with punctuation; numbers like 3.14159 and 42; and words "
    "that a tokenizer has to split into several pieces: unbelievably, antidisestablishment.",
    "Bonjour le monde",
    "?",
    "Embeddings of short and long texts in one batch must not change with the padding.",
)


@dataclass(frozen=True)
class TextImport:
    task: str
    width: int
    samples: int
    worst: float  # lowest cosine (embedding) or largest score difference (classifier)


def is_text_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def export(source: Path, staging: Path, max_length: int | None = None) -> TextImport:
    """Write the version folder into ``staging`` and check it; ConfigError says why not."""
    try:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification
    except ImportError:
        raise ConfigError(
            "importing a text model needs torch and transformers: pip install 'mlapi[import]'"
        ) from None
    if not any(source.glob("*.safetensors")):
        raise ConfigError(
            f"{source} has no *.safetensors weights (a pytorch_model.bin is a pickle: "
            "save the model with safetensors first)"
        )
    settings = text_config.read(source, None, None)
    if max_length is not None:
        settings = text_config.TextSettings(**{**settings.__dict__, "max_length": max_length})
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    loader = AutoModelForSequenceClassification if settings.task == "classification" else AutoModel
    try:
        model = loader.from_pretrained(
            str(source), use_safetensors=True, attn_implementation="eager"
        )
        ids = _token_ids(source, settings)
    except Exception as exc:  # a corrupt or truncated file: transformers' many errors
        raise ConfigError(f"{source} cannot be read as a text model: {_first_line(exc)}") from None
    model.eval()
    # the reference first: exporting traces the model and leaves it changed
    expected = _reference(torch, model, settings, ids)
    staging.mkdir(parents=True, exist_ok=True)
    _export_onnx(torch, model, settings.task, staging / "model.onnx")
    shutil.copyfile(source / "tokenizer.json", staging / "tokenizer.json")
    (staging / "model.toml").write_text(_toml(settings, source))
    return _check(expected, settings, staging)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _token_ids(source: Path, settings: text_config.TextSettings) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(settings.max_length)
    return [encoding.ids for encoding in tokenizer.encode_batch(list(SAMPLES))]


def _export_onnx(torch: Any, model: Any, task: str, path: Path) -> None:
    output = "logits" if task == "classification" else "last_hidden_state"

    class Encoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            result = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return getattr(result, output)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch"} if task == "classification" else {0: "batch", 1: "sequence"}
    # The TorchScript exporter: deprecated since torch 2.9, but it needs nothing beyond
    # torch and onnx (the new one needs onnxscript) and exports these encoders exactly
    # (the check below proves it each time). Its tracer warnings are about torch's
    # internals, not the user's model: kept out of the user's terminal.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(),
            example,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _toml(settings: text_config.TextSettings, source: Path) -> str:
    lines = [
        f"# Imported by `mlapi models import` from {source.name} (sentence-transformers layout).",
        'runtime = "text"',
    ]
    if settings.labels:
        lines.append("labels = " + json.dumps(list(settings.labels)))
    lines += [
        "",
        "[text]",
        f'task = "{settings.task}"',
        f'pooling = "{settings.pooling}"',
        f"normalize = {'true' if settings.normalize else 'false'}",
        f"max_length = {settings.max_length}",
        "truncate = true",
        "",
        "[batching]",
        "max_batch_size = 64",
        "",
        "[warmup]",
        'inputs = { text = ["warm up the encoder", "and its tokenizer"] }',
        "",
    ]
    return "\n".join(lines)


def _check(expected: np.ndarray, settings: text_config.TextSettings, staging: Path) -> TextImport:
    """The staged folder served by the text runtime against the original in torch."""
    from mlapi.repository import config as model_config
    from mlapi.runtimes.text import TextRuntime

    config: ModelConfig = model_config.parse(model_config.read_raw(staging / "model.toml"))
    runtime = TextRuntime(
        LoadContext(staging, staging / "model.onnx", config, False, intra_op_threads=0)
    )
    try:
        rows = np.array(SAMPLES, dtype=object)
        served = runtime.predict({"text": rows}, runtime.signature.output_names())
    finally:
        runtime.close()
    if settings.task == "classification":
        worst = checks.compare_scores(served["scores"], expected)
        return TextImport("classification", expected.shape[1], len(SAMPLES), worst)
    worst = checks.compare_embeddings(served["embedding"], expected)
    return TextImport("embedding", expected.shape[1], len(SAMPLES), worst)


def _reference(
    torch: Any, model: Any, settings: text_config.TextSettings, ids: list[list[int]]
) -> np.ndarray:
    """The original model on each sample alone (no padding), pooled as configured."""
    rows = []
    with torch.no_grad():
        for row in ids:
            tensor = torch.tensor([row], dtype=torch.long)
            mask = torch.ones_like(tensor)
            out = model(
                input_ids=tensor, attention_mask=mask, token_type_ids=torch.zeros_like(tensor)
            )
            if settings.task == "classification":
                rows.append(torch.softmax(out.logits, dim=-1)[0].numpy())
                continue
            states = out.last_hidden_state[0]
            vector = states[0] if settings.pooling == "cls" else states.mean(dim=0)
            if settings.normalize:
                vector = vector / vector.norm()
            rows.append(vector.numpy())
    return np.stack(rows).astype(np.float32)
