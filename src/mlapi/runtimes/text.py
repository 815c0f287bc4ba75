"""Text models: an ONNX transformer encoder, its Hugging Face ``tokenizer.json``
(run with the ``tokenizers`` library) and the pooling settings (``text_config``).
Input ``text`` (BYTES, one string per row); output ``embedding`` (FP32, pooled and
normalised as the model says) or, for a sequence classifier, ``label`` and
``scores``; and ``tokens``, each row's token count (for usage reports).

A batch (the rows of every request the batcher merged) is encoded in passes: rows
sorted by token count, cut where a pass would pad to more than ``max_padding`` times
its real tokens (once it has MIN_PASS_ROWS rows) or take more than ``token_budget``
tokens, padding included; results put back in order. Without the cut, two requests
of 5 to 40 words merged into one pass of 64 rows compute about 1.6 times their real
tokens. Rows over ``max_length`` are cut when ``truncate`` is on (the
default), else refused with a 400 that names the row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from mlapi.errors import BadRequest, ModelLoadError
from mlapi.runtimes import text_config
from mlapi.runtimes.base import LoadContext
from mlapi.runtimes.onnx import RunSwitch, open_session
from mlapi.tensors import Signature, TensorSpec

TOKENIZER_FILE = "tokenizer.json"
# the padding bound cuts no pass shorter than this: a pass of one or two rows costs a
# run's overhead for little saved (2 to 8 measured alike)
MIN_PASS_ROWS = 4
_KNOWN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


class TextRuntime:
    platform = "text"

    def __init__(self, ctx: LoadContext) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ModelLoadError(
                "text models need the 'tokenizers' package: install mlapi[text], or build "
                "the image with MLAPI_EXTRAS=text"
            ) from None
        self.settings = text_config.read(ctx.model_dir, ctx.config.text, ctx.config.labels)
        try:
            self._tokenizer = Tokenizer.from_file(str(ctx.model_dir / TOKENIZER_FILE))
        except Exception as exc:
            raise ModelLoadError(f"{TOKENIZER_FILE} cannot be read: {str(exc)[:200]}") from None
        self._tokenizer.no_padding()
        if self.settings.truncate:
            self._tokenizer.enable_truncation(self.settings.max_length)
        else:
            self._tokenizer.no_truncation()
        self._vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self._session, _ = open_session(ctx)
        self._switch = RunSwitch()
        names = [node.name for node in self._session.get_inputs()]
        if not {"input_ids", "attention_mask"} <= set(names) or set(names) - _KNOWN_INPUTS:
            raise ModelLoadError(
                f"a text model's graph takes input_ids, attention_mask (and token_type_ids); "
                f"this one takes {names}"
            )
        self._inputs = names
        self._output = self._session.get_outputs()[0].name
        width = self._encode([self._tokenizer.encode("a").ids]).shape[-1]
        self.width = int(width)
        self.signature = Signature(
            inputs=(TensorSpec("text", "BYTES", (-1,)),), outputs=self._outputs()
        )

    def _outputs(self) -> tuple[TensorSpec, ...]:
        tokens = TensorSpec("tokens", "INT32", (-1,))
        if self.settings.task == "embedding":
            return (TensorSpec("embedding", "FP32", (-1, self.width)), tokens)
        labels = self.settings.labels
        if labels is not None and len(labels) != self.width:
            raise ModelLoadError(f"{len(labels)} labels for a classifier of {self.width} classes")
        return (
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("scores", "FP32", (-1, self.width)),
            tokens,
        )

    def token_ids(self, rows: np.ndarray) -> list[list[int]]:
        """Each row's token ids: strings are tokenized, id lists checked."""
        items = rows.ravel().tolist()
        texts = [
            (i, _as_text(i, item)) for i, item in enumerate(items) if not isinstance(item, list)
        ]
        ids: list[list[int] | None] = [None] * len(items)
        for (index, _), encoding in zip(
            texts, self._tokenizer.encode_batch([t for _, t in texts]), strict=True
        ):
            ids[index] = encoding.ids
        for index, item in enumerate(items):
            if isinstance(item, list):
                if not item or not all(
                    isinstance(t, int) and 0 <= t < self._vocab_size for t in item
                ):
                    raise BadRequest(
                        f"input[{index}]: token ids must be a non-empty list of integers "
                        f"from 0 to {self._vocab_size - 1}"
                    )
                ids[index] = item[: self.settings.max_length] if self.settings.truncate else item
        done = [row or [] for row in ids]
        if not self.settings.truncate:
            for index, row in enumerate(done):
                if len(row) > self.settings.max_length:
                    raise BadRequest(
                        f"input[{index}] has {len(row)} tokens, over this model's maximum of "
                        f"{self.settings.max_length} (truncation is off)"
                    )
        return done

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        text = inputs.get("text")
        if text is None:
            raise BadRequest("a text model takes one input, 'text'")
        ids = self.token_ids(text)
        pooled = np.empty((len(ids), self.width), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) for i in order]
        options = self._switch.begin()  # one for every pass: an interrupt stops them all
        try:
            for start, end in passes(
                lengths, self.settings.token_budget, self.settings.max_padding
            ):
                chosen = order[start:end]
                pooled[chosen] = self._encode([ids[i] for i in chosen], options)
        finally:
            self._switch.end()
        results = self._results(pooled, np.array([len(row) for row in ids], dtype=np.int32))
        return {name: results[name] for name in output_names}

    def _results(self, pooled: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
        if self.settings.task == "embedding":
            return {"embedding": pooled, "tokens": tokens}
        shifted = np.exp(pooled - pooled.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
        best = scores.argmax(axis=1)
        names = self.settings.labels or tuple(str(i) for i in range(self.width))
        labels = np.array([names[i] for i in best], dtype=object)
        return {"label": labels, "scores": scores.astype(np.float32), "tokens": tokens}

    def interrupt(self) -> bool:
        return self._switch.interrupt()

    def _encode(self, rows: list[list[int]], options: ort.RunOptions | None = None) -> np.ndarray:
        """One pass of the encoder on rows padded to the longest: pooled [rows, width]."""
        longest = max(len(row) for row in rows)
        input_ids = np.full((len(rows), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (raw,) = self._session.run([self._output], feeds, options)
        output: np.ndarray = np.asarray(raw, dtype=np.float32)
        if output.ndim == 3:  # token states: pool them
            if self.settings.pooling == "cls":
                output = output[:, 0]
            else:
                weights = mask[:, :, None].astype(np.float32)
                output = (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.settings.task == "embedding" and self.settings.normalize:
            output = output / np.maximum(np.linalg.norm(output, axis=1, keepdims=True), 1e-12)
        return output

    def close(self) -> None:
        del self._session


def passes(lengths: Sequence[int], token_budget: int, max_padding: float) -> list[tuple[int, int]]:
    """[start, end) of each pass over rows of ``lengths`` tokens (ascending): a pass
    grows while its rows x its longest stay within ``token_budget`` and, once it has
    MIN_PASS_ROWS rows, within ``max_padding`` x its real tokens. A row longer than
    the budget is a pass of its own."""
    found = []
    start = 0
    while start < len(lengths):
        end = start + 1
        real = lengths[start]
        while end < len(lengths):
            rows, longest = end + 1 - start, lengths[end]
            if rows * longest > token_budget:
                break
            if end - start >= MIN_PASS_ROWS and rows * longest > max_padding * (real + longest):
                break
            real += longest
            end += 1
        found.append((start, end))
        start = end
    return found


def _as_text(index: int, item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"input[{index}] is not valid UTF-8") from None
    raise BadRequest(f"input[{index}] must be a string or a list of token ids")
