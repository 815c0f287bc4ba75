"""Text models: an ONNX transformer encoder, its Hugging Face ``tokenizer.json``
(run with the ``tokenizers`` library) and the pooling settings (``text_config``).
Input ``text`` (BYTES, one string per row); output ``embedding`` (FP32, pooled and
normalised as the model says) or, for a sequence classifier, ``label`` and
``scores`` (softmax over its classes; a one-class model's sigmoid, as transformers'
pipeline gives); and ``tokens``, each row's token count (for usage reports). A
reranker (a cross-encoder: a sequence classifier of one output, task ``rerank``)
takes ``text`` and ``text_pair`` (a query and a document per row, encoded as one
pair, the second's token types 1) and gives ``score``, the sigmoid of its logit, as
sentence-transformers' CrossEncoder does.

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
# a row as the encoder takes it: token ids, and their token types when a pair
Row = tuple[list[int], list[int] | None]


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
        width = self._encode([(self._tokenizer.encode("a").ids, None)]).shape[-1]
        self.width = int(width)
        text = TensorSpec("text", "BYTES", (-1,))
        inputs = (text, TensorSpec("text_pair", "BYTES", (-1,))) if self.pairs else (text,)
        self.signature = Signature(inputs=inputs, outputs=self._outputs())

    @property
    def pairs(self) -> bool:
        """Whether each row is a (query, document) pair: a reranker's."""
        return self.settings.task == "rerank"

    def _outputs(self) -> tuple[TensorSpec, ...]:
        tokens = TensorSpec("tokens", "INT32", (-1,))
        if self.settings.task == "embedding":
            return (TensorSpec("embedding", "FP32", (-1, self.width)), tokens)
        if self.settings.task == "rerank":
            if self.width != 1:
                raise ModelLoadError(
                    f"a reranker gives one score a pair; this model gives {self.width}"
                )
            return (TensorSpec("score", "FP32", (-1,)), tokens)
        labels = self.settings.labels
        if labels is not None and len(labels) != self.width:
            raise ModelLoadError(f"{len(labels)} labels for a classifier of {self.width} classes")
        return (
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("scores", "FP32", (-1, self.width)),
            tokens,
        )

    def token_ids(self, rows: np.ndarray, name: str = "input") -> list[list[int]]:
        """Each row's token ids: strings are tokenized, id lists checked; ``name``
        is what a refusal calls the rows ("input[3] ...")."""
        items = rows.ravel().tolist()
        texts = [
            (i, _as_text(name, i, item))
            for i, item in enumerate(items)
            if not isinstance(item, list)
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
                        f"{name}[{index}]: token ids must be a non-empty list of integers "
                        f"from 0 to {self._vocab_size - 1}"
                    )
                ids[index] = item[: self.settings.max_length] if self.settings.truncate else item
        done = [row or [] for row in ids]
        self._check_lengths(done, name)
        return done

    def pair_ids(
        self, queries: np.ndarray, documents: np.ndarray, name: str = "text_pair"
    ) -> list[Row]:
        """Each (query, document) row encoded as one pair: its ids and token types.
        Over ``max_length``, the longer of the two is cut first (as Hugging Face
        tokenizers and sentence-transformers do), or the row refused when
        truncation is off."""
        first, second = queries.ravel().tolist(), documents.ravel().tolist()
        if len(first) != len(second):
            raise BadRequest(f"{len(first)} texts and {len(second)} text pairs: one pair a row")
        pairs = [
            (_as_text("text", i, a), _as_text(name, i, b))
            for i, (a, b) in enumerate(zip(first, second, strict=True))
        ]
        encoded: list[Row] = [(e.ids, e.type_ids) for e in self._tokenizer.encode_batch(pairs)]
        self._check_lengths([ids for ids, _ in encoded], name)
        return encoded

    def _check_lengths(self, rows: list[list[int]], name: str) -> None:
        if self.settings.truncate:
            return
        for index, row in enumerate(rows):
            if len(row) > self.settings.max_length:
                raise BadRequest(
                    f"{name}[{index}] has {len(row)} tokens, over this model's maximum of "
                    f"{self.settings.max_length} (truncation is off)"
                )

    def rows(self, inputs: dict[str, np.ndarray]) -> list[Row]:
        """The rows of a request or batch: text (or token ids), text pairs, or pairs
        a front encoded already (a tuple of ids and types per row)."""
        text = inputs.get("text")
        if text is None:
            raise BadRequest("a text model takes the input 'text'")
        if self.pairs:
            items = text.ravel().tolist()
            if items and all(isinstance(item, tuple) for item in items):
                return items
            pair = inputs.get("text_pair")
            if pair is None:
                raise BadRequest("a reranker takes 'text' (the queries) and 'text_pair'")
            return self.pair_ids(text, pair)
        return [(ids, None) for ids in self.token_ids(text)]

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        rows = self.rows(inputs)
        pooled = np.empty((len(rows), self.width), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        lengths = [len(rows[i][0]) for i in order]
        options = self._switch.begin()  # one for every pass: an interrupt stops them all
        try:
            for start, end in passes(
                lengths, self.settings.token_budget, self.settings.max_padding
            ):
                chosen = order[start:end]
                pooled[chosen] = self._encode([rows[i] for i in chosen], options)
        finally:
            self._switch.end()
        tokens = np.array([len(ids) for ids, _ in rows], dtype=np.int32)
        results = self._results(pooled, tokens)
        return {name: results[name] for name in output_names}

    def _results(self, pooled: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
        if self.settings.task == "embedding":
            return {"embedding": pooled, "tokens": tokens}
        if self.width == 1:  # one logit: its sigmoid (a reranker's relevance)
            scores = 1.0 / (1.0 + np.exp(-pooled.astype(np.float64)))
        else:
            shifted = np.exp(pooled - pooled.max(axis=1, keepdims=True))
            scores = shifted / shifted.sum(axis=1, keepdims=True)
        scores = scores.astype(np.float32)
        if self.settings.task == "rerank":
            return {"score": scores[:, 0], "tokens": tokens}
        best = scores.argmax(axis=1)
        names = self.label_names()
        labels = np.array([names[i] for i in best], dtype=object)
        return {"label": labels, "scores": scores, "tokens": tokens}

    def label_names(self) -> tuple[str, ...]:
        """A classifier's class names, in the order of its scores."""
        return self.settings.labels or tuple(str(i) for i in range(self.width))

    def interrupt(self) -> bool:
        return self._switch.interrupt()

    def _encode(self, rows: list[Row], options: ort.RunOptions | None = None) -> np.ndarray:
        """One pass of the encoder on rows padded to the longest: pooled [rows, width]."""
        longest = max(len(ids) for ids, _ in rows)
        input_ids = np.full((len(rows), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        types = np.zeros_like(input_ids)
        for i, (ids, type_ids) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
            if type_ids is not None:
                types[i, : len(type_ids)] = type_ids
        feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = types
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


def _as_text(name: str, index: int, item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{name}[{index}] is not valid UTF-8") from None
    raise BadRequest(f"{name}[{index}] must be a string or a list of token ids")
