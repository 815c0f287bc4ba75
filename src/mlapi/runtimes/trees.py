"""Gradient-boosted trees in formats that cannot run code: XGBoost (``model.json`` or
``model.ubj``) and LightGBM (its text format, ``model.txt``), served by their own
libraries: exact by construction. XGBoost's ONNX conversion measured faster
(bench/trees.py) with the same float32 arithmetic: `mlapi models import` makes it
from a pickled estimator; this runtime serves the files dropped in as they are. The signature comes
from the model: ``input`` (FP64, ``[-1, n_features]``; the library converts as its
own predict would); a classifier answers ``label`` and ``probabilities``, a regressor
``prediction``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlapi.errors import ModelLoadError
from mlapi.runtimes.base import LoadContext
from mlapi.tensors import Signature, TensorSpec

_XGB_CLASSIFIERS = ("binary:logistic", "multi:softprob")
_XGB_REFUSED = ("multi:softmax", "binary:hinge", "binary:logitraw")
_LGB_CLASSIFIERS = ("binary", "multiclass", "multiclassova", "cross_entropy", "xentropy")


def _import(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ModelLoadError(
            f"{module} models need the '{module}' package: install mlapi[trees], or build "
            "the image with MLAPI_EXTRAS=trees"
        ) from None


class _TreeModel:
    """What both libraries share once the model says what it is."""

    platform = ""
    classes = 0  # 0: a regressor

    def _signature(self, ctx: LoadContext, n_features: int) -> None:
        labels = ctx.config.labels
        if self.classes and labels is not None and len(labels) != self.classes:
            raise ModelLoadError(f"{len(labels)} labels for a model of {self.classes} classes")
        self._labels = np.array(labels or [str(i) for i in range(self.classes)], dtype=object)
        inputs = (TensorSpec("input", "FP64", (-1, n_features)),)
        outputs: tuple[TensorSpec, ...]
        if self.classes:
            outputs = (
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("probabilities", "FP32", (-1, self.classes)),
            )
        else:
            outputs = (TensorSpec("prediction", "FP32", (-1,)),)
        self.signature = Signature(inputs=inputs, outputs=outputs)

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        raw = np.asarray(self._raw(inputs["input"]), dtype=np.float64)
        if not self.classes:
            return {"prediction": raw.reshape(-1).astype(np.float32)}
        probabilities = np.column_stack([1.0 - raw, raw]) if raw.ndim == 1 else raw
        results = {
            "label": self._labels[probabilities.argmax(axis=1)],
            "probabilities": probabilities.astype(np.float32),
        }
        return {name: results[name] for name in output_names}

    def close(self) -> None:
        return None


class XGBoostRuntime(_TreeModel):
    platform = "xgboost"

    def __init__(self, ctx: LoadContext) -> None:
        xgboost = _import("xgboost")
        self._booster = xgboost.Booster()
        try:
            self._booster.load_model(str(ctx.model_file))
        except Exception as exc:  # xgboost raises its own XGBoostError
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ModelLoadError(
                f"'{ctx.relative(ctx.model_file)}' is not an XGBoost model: {first}"
            ) from None
        self._booster.set_param({"nthread": max(1, ctx.intra_op_threads)})
        learner = json.loads(self._booster.save_config())["learner"]
        objective = learner["objective"]["name"]
        if objective in _XGB_REFUSED:
            raise ModelLoadError(
                f"XGBoost objective '{objective}' gives no probabilities: train with "
                "binary:logistic or multi:softprob"
            )
        if objective in _XGB_CLASSIFIERS:
            self.classes = max(2, int(learner["learner_model_param"]["num_class"]))
        self._signature(ctx, self._booster.num_features())

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.inplace_predict(rows, validate_features=False))


class LightGBMRuntime(_TreeModel):
    platform = "lightgbm"

    def __init__(self, ctx: LoadContext) -> None:
        lightgbm = _import("lightgbm")
        try:
            self._booster = lightgbm.Booster(model_file=str(ctx.model_file))
        except Exception as exc:  # LightGBMError, or a file that is not a model
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ModelLoadError(
                f"'{ctx.relative(ctx.model_file)}' is not a LightGBM model: {first}"
            ) from None
        self._threads = max(1, ctx.intra_op_threads)
        objective = _lightgbm_objective(ctx.model_file.read_text(errors="replace"))
        if objective and objective.split()[0] in _LGB_CLASSIFIERS:
            self.classes = max(2, self._booster.num_model_per_iteration())
        self._signature(ctx, self._booster.num_feature())

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.predict(rows, num_threads=self._threads))


def _lightgbm_objective(text: str) -> str:
    """The ``objective=`` line of a LightGBM text model (before its trees)."""
    for line in text.splitlines():
        if line.startswith("objective="):
            return line.partition("=")[2].strip()
        if line.startswith("Tree="):
            break
    return ""
