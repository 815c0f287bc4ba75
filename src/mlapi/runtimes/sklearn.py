"""scikit-learn through skops: a safe format that loads only allow-listed types.
Pickle/joblib files load here only when the operator set MLAPI_ALLOW_PICKLE."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlapi.errors import ModelLoadError
from mlapi.repository.safety import PICKLE_SUFFIXES
from mlapi.runtimes.base import LoadContext
from mlapi.tensors import Signature, TensorSpec, datatype_of


class SklearnRuntime:
    platform = "scikit-learn"

    def __init__(self, ctx: LoadContext) -> None:
        self._model = _load(ctx)
        if not hasattr(self._model, "predict"):
            raise ModelLoadError("the loaded object has no predict() method")
        self.signature = Signature(
            inputs=ctx.config.inputs or (self._default_input(),),
            outputs=ctx.config.outputs or self._default_outputs(),
        )
        self._input_name = self.signature.inputs[0].name
        if len(self.signature.inputs) != 1:
            raise ModelLoadError("a scikit-learn model takes exactly one input")

    def _default_input(self) -> TensorSpec:
        n_features = getattr(self._model, "n_features_in_", None)
        if not isinstance(n_features, int):
            raise ModelLoadError("cannot tell the input width: declare [[inputs]] in model.toml")
        return TensorSpec("input", "FP64", (-1, n_features))

    def _default_outputs(self) -> tuple[TensorSpec, ...]:
        classes = getattr(self._model, "classes_", None)
        if classes is None:
            return (TensorSpec("prediction", "FP64", (-1,)),)
        outputs = [TensorSpec("label", datatype_of(np.asarray(classes)), (-1,))]
        if hasattr(self._model, "predict_proba"):
            outputs.append(TensorSpec("probabilities", "FP64", (-1, len(classes))))
        return tuple(outputs)

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        features = inputs[self._input_name]
        results: dict[str, np.ndarray] = {}
        for name in output_names:
            if name == "probabilities":
                results[name] = np.asarray(self._model.predict_proba(features))
            else:
                results[name] = np.asarray(self._model.predict(features))
        return results

    def close(self) -> None:
        self._model = None


# What the message says where scikit-learn is not installed (the default image).
NOT_INSTALLED = (
    "scikit-learn models need the scikit-learn runtime, which this installation does not "
    "have: use the image built with MLAPI_EXTRAS=sklearn (docker compose build --build-arg "
    "MLAPI_EXTRAS=sklearn), or pip install 'mlapi[sklearn]'; or export the model to ONNX"
)


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(NOT_INSTALLED) from None


def _load(ctx: LoadContext) -> Any:
    suffix = ctx.model_file.suffix.lower()
    shown = ctx.relative(ctx.model_file)
    if suffix in PICKLE_SUFFIXES:
        if not ctx.allow_pickle:  # the folder check runs first; this is a second lock
            raise ModelLoadError(f"refused '{shown}': pickle files need MLAPI_ALLOW_PICKLE=true")
        joblib = _import("joblib")
        try:
            return joblib.load(ctx.model_file)
        except Exception as exc:
            raise ModelLoadError(
                f"'{shown}' could not be unpickled ({type(exc).__name__})"
            ) from None

    sio = _import("skops.io")
    try:
        untrusted = sio.get_untrusted_types(file=ctx.model_file)
    except Exception as exc:
        raise ModelLoadError(
            f"'{shown}' is not a valid skops file ({type(exc).__name__})"
        ) from None
    refused = sorted(set(untrusted) - set(ctx.config.trusted_types))
    if refused:
        raise ModelLoadError(
            f"'{shown}' holds types skops does not trust by default: {refused}. "
            f"If you trust them, list them in model.toml as trusted_types"
        )
    try:
        return sio.load(ctx.model_file, trusted=list(untrusted))
    except Exception as exc:
        raise ModelLoadError(
            f"'{shown}' could not be loaded by skops ({type(exc).__name__})"
        ) from None
