"""A sentence-transformers (or Hugging Face) folder to a text model version: the
encoder exported to ONNX from its safetensors weights (never a pickle), its
``tokenizer.json`` beside it, and a model.toml that spells out the pooling,
normalisation and maximum length the folder's own config files give. Before it is
published, the exported model is served by the text runtime itself on sample
sentences and compared with the original in torch: it is refused unless every
embedding is within ``checks.MIN_COSINE`` of the original (a classifier: same labels,
scores within ``checks.SCORE_TOLERANCE``; a reranker, on query and document pairs:
scores within it).

``quantize="int8"``: the exported encoder's weights are then quantized to int8 by
onnxruntime's dynamic quantization (activations quantized at run time), and it is
the int8 model that is held to the fp32 original, to the looser bounds of
``checks.INT8_MIN_COSINE`` and ``checks.INT8_SCORE_TOLERANCE``."""

from __future__ import annotations

import json
import logging
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
# a reranker's samples: each sample as a query against every sample as a document
PAIRS = tuple((query, document) for query in SAMPLES[:3] for document in SAMPLES)
QUANTIZATIONS = ("int8",)
# what stays fp32 in each int8 try, in order (see _quantized): nothing, then the
# MatMuls that write back into the residual stream (Hugging Face BERT-family names)
INT8_PLANS: tuple[tuple[str, ...], ...] = ((), ("/output/dense/",))


@dataclass(frozen=True)
class TextImport:
    task: str
    width: int
    samples: int
    worst: float  # lowest cosine (embedding) or largest score difference (classifier)
    quantized: str | None = None


def is_text_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def export(
    source: Path, staging: Path, max_length: int | None = None, quantize: str | None = None
) -> TextImport:
    """Write the version folder into ``staging`` and check it; ConfigError says why not."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {list(QUANTIZATIONS)}")
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
    loader = AutoModel if settings.task == "embedding" else AutoModelForSequenceClassification
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
    (staging / "model.toml").write_text(_toml(settings, source, quantize))
    if quantize is None:
        return _check(expected, settings, staging)
    return _quantized(expected, settings, staging)


def _quantized(
    expected: np.ndarray, settings: text_config.TextSettings, staging: Path
) -> TextImport:
    """The int8 form that passes the check: every weight MatMul first; when that
    strays past the bound, again with the projections back into the residual stream
    (attention output, feed-forward output: where BERT's outlier activations sit) in
    fp32: on all-MiniLM-L6-v2 the lowest cosine of the check went from 0.964 to 0.975
    (0.995 or more on all but a one-character sample), in-process speed from 1.9x
    fp32 to 1.4x. Refused when neither passes, with both lowest cosines."""
    fp32 = staging / "model.fp32.onnx"
    shutil.copyfile(staging / "model.onnx", fp32)
    refusals = []
    try:
        for keep in INT8_PLANS:
            shutil.copyfile(fp32, staging / "model.onnx")
            quantize_int8(staging / "model.onnx", keep)
            try:
                return _check(expected, settings, staging, "int8")
            except ConfigError as refused:
                refusals.append(str(refused))
    finally:
        fp32.unlink(missing_ok=True)
    every = refusals[0].split(": ", 1)[-1]
    raise ConfigError(f"int8 refused: {refusals[-1]}; with every MatMul quantized, {every}")


def quantize_int8(path: Path, keep_fp32: tuple[str, ...] = ()) -> None:
    """The encoder at ``path`` replaced by its int8 form: onnxruntime's dynamic
    quantization of the MatMuls that hold weights (most of an encoder's work),
    per output channel (per tensor, all-MiniLM-L6-v2's lowest cosine was 0.78);
    activations are quantized at run time. MatMuls whose names contain one of
    ``keep_fp32`` stay fp32."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:  # onnxruntime without its quantization tools' needs (onnx)
        raise ConfigError(
            "--quantize needs the 'onnx' package: pip install 'mlapi[import]'"
        ) from None
    graph = onnx.load(str(path), load_external_data=False).graph
    kept = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and any(part in node.name for part in keep_fp32)
    ]
    quantized = path.with_name("model.int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantization
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(path),
                str(quantized),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=kept,
                extra_options={"MatMulConstBOnly": True},
            )
    finally:
        root.setLevel(level)
    quantized.replace(path)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _token_ids(
    source: Path, settings: text_config.TextSettings
) -> list[tuple[list[int], list[int]]]:
    """The samples' token ids and types (pairs for a reranker)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(settings.max_length)
    samples: list[Any] = list(PAIRS if settings.task == "rerank" else SAMPLES)
    return [(e.ids, e.type_ids) for e in tokenizer.encode_batch(samples)]


def _export_onnx(torch: Any, model: Any, task: str, path: Path) -> None:
    output = "last_hidden_state" if task == "embedding" else "logits"

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
    axes[output] = {0: "batch", 1: "sequence"} if task == "embedding" else {0: "batch"}
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


def _toml(settings: text_config.TextSettings, source: Path, quantize: str | None) -> str:
    lines = [
        f"# Imported by `mlapi models import` from {source.name} (sentence-transformers layout)"
        + (f", weights quantized to {quantize}." if quantize else "."),
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
        'inputs = { text = ["warm up the encoder", "and its tokenizer"]'
        + (', text_pair = ["a document", "and another"] }' if settings.task == "rerank" else " }"),
        "",
    ]
    return "\n".join(lines)


def _check(
    expected: np.ndarray,
    settings: text_config.TextSettings,
    staging: Path,
    quantize: str | None = None,
) -> TextImport:
    """The staged folder served by the text runtime against the original in torch."""
    from mlapi.repository import config as model_config
    from mlapi.runtimes.text import TextRuntime

    config: ModelConfig = model_config.parse(model_config.read_raw(staging / "model.toml"))
    runtime = TextRuntime(
        LoadContext(staging, staging / "model.onnx", config, False, intra_op_threads=0)
    )
    try:
        if settings.task == "rerank":
            inputs = {
                "text": np.array([q for q, _ in PAIRS], dtype=object),
                "text_pair": np.array([d for _, d in PAIRS], dtype=object),
            }
        else:
            inputs = {"text": np.array(SAMPLES, dtype=object)}
        served = runtime.predict(inputs, runtime.signature.output_names())
    finally:
        runtime.close()
    int8 = quantize is not None
    if settings.task == "embedding":
        worst = checks.compare_embeddings(served["embedding"], expected, int8)
    else:
        scores = served["score"][:, None] if settings.task == "rerank" else served["scores"]
        worst = checks.compare_scores(scores, expected, int8)
    return TextImport(settings.task, expected.shape[1], len(expected), worst, quantize)


def _reference(
    torch: Any,
    model: Any,
    settings: text_config.TextSettings,
    ids: list[tuple[list[int], list[int]]],
) -> np.ndarray:
    """The original model on each sample alone (no padding), pooled as configured."""
    rows = []
    with torch.no_grad():
        for row, types in ids:
            tensor = torch.tensor([row], dtype=torch.long)
            mask = torch.ones_like(tensor)
            out = model(
                input_ids=tensor,
                attention_mask=mask,
                token_type_ids=torch.tensor([types], dtype=torch.long),
            )
            if settings.task != "embedding":
                logits = out.logits[0]
                one = logits.shape[-1] == 1  # one logit: its sigmoid, as the runtime gives
                rows.append((torch.sigmoid(logits) if one else torch.softmax(logits, -1)).numpy())
                continue
            states = out.last_hidden_state[0]
            vector = states[0] if settings.pooling == "cls" else states.mean(dim=0)
            if settings.normalize:
                vector = vector / vector.norm()
            rows.append(vector.numpy())
    return np.stack(rows).astype(np.float32)
