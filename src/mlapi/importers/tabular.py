"""A pickled (or joblib) scikit-learn estimator or pipeline, which the user says they
trust, to a version folder in a format that cannot run code: ONNX where skl2onnx can
convert it (a double-precision input first, so that tree thresholds compare as in
scikit-learn), else skops with the types it holds listed as trusted; an XGBoost
estimator to ONNX (else its ``model.json``), a LightGBM one to its ``model.txt``.

The result is served by the runtime that will serve it in production, on sample rows
(the user's ``--sample``, else rows generated from ``n_features_in_``), and compared
with the original: labels must be equal and probabilities (or predictions) within
``checks.TOLERANCE``; else it is refused, or with no ``--to`` given, ONNX falls back to skops."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlapi.errors import ConfigError, MlapiError
from mlapi.importers import checks
from mlapi.repository import config as model_config
from mlapi.repository.safety import PICKLE_SUFFIXES
from mlapi.runtimes import catalog
from mlapi.runtimes.base import LoadContext
from mlapi.serving.drift import save_reference

GENERATED_ROWS = 240


@dataclass(frozen=True)
class TabularImport:
    format: str  # onnx, skops, xgboost, lightgbm
    rows: int
    generated: bool
    largest_difference: float
    notes: tuple[str, ...] = ()


def is_pickle(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES


def export(
    source: Path, staging: Path, trust: bool, to: str | None, sample: Path | None
) -> TabularImport:
    if not trust:
        raise ConfigError(
            f"{source.name} is a pickle: loading it runs any code it holds. Pass --trust "
            "only for a file you made or whose maker you trust"
        )
    try:
        import joblib
    except ImportError:
        raise ConfigError("importing a pickle needs joblib: pip install 'mlapi[import]'") from None
    try:
        model = joblib.load(source)
    except Exception as exc:
        raise ConfigError(f"{source.name} does not load: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(model, "predict", None)):
        raise ConfigError(f"{source.name} holds a {type(model).__name__}, which has no predict()")
    rows, generated = _rows(model, sample)
    staging.mkdir(parents=True, exist_ok=True)
    module = type(model).__module__.split(".")[0]
    if module in ("xgboost", "lightgbm"):
        return _library_file(model, module, staging, rows, generated)
    notes: list[str] = []
    if to in (None, "onnx"):
        try:
            _onnx(model, rows, staging)
            return _checked(model, "onnx", staging, rows, generated, notes)
        except ConfigError as exc:
            if to == "onnx":
                raise
            notes.append(f"ONNX: {exc}; kept as skops instead")
            for leftover in staging.iterdir():
                leftover.unlink()
    _skops(model, staging)
    return _checked(model, "skops", staging, rows, generated, notes)


def _rows(model: Any, sample: Path | None) -> tuple[np.ndarray, bool]:
    if sample is not None:
        try:
            rows = np.load(sample, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--sample {sample}: not a .npy array ({exc})") from None
        if rows.ndim != 2 or not len(rows):
            raise ConfigError(f"--sample {sample}: needs a 2-D array of rows")
        return rows.astype(np.float64), False
    width = getattr(model, "n_features_in_", None)
    if not isinstance(width, int):
        raise ConfigError("the model does not say its number of features: give --sample")
    generator = np.random.default_rng(0)
    scales = np.repeat([1.0, 10.0, 100.0], GENERATED_ROWS // 3)[:, None]
    return generator.normal(size=(len(scales), width)) * scales, True


def _labels(model: Any) -> list[Any] | None:
    classes = getattr(model, "classes_", None)
    return None if classes is None else [c.item() if hasattr(c, "item") else c for c in classes]


def _write_toml(staging: Path, runtime: str, model: Any, *extra: str) -> None:
    """model.toml: the runtime, the classes as labels (a classifier's), and ``extra``."""
    lines = ["# Made by `mlapi models import`.", f'runtime = "{runtime}"']
    labels = _labels(model)
    if labels is not None:
        lines.append("labels = " + json.dumps([str(label) for label in labels]))
    (staging / "model.toml").write_text("\n".join([*lines, *extra, ""]))


def _onnx(model: Any, rows: np.ndarray, staging: Path) -> None:
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    except ImportError:
        raise ConfigError("skl2onnx is not installed (pip install 'mlapi[import]')") from None
    width = rows.shape[1]
    last: Exception | None = None
    for kind in (DoubleTensorType, FloatTensorType):
        try:
            onnx_model = to_onnx(
                model,
                initial_types=[("input", kind([None, width]))],
                options={"zipmap": False} if hasattr(model, "predict_proba") else None,
                target_opset=17,
            )
            break
        except Exception as exc:  # each converter raises its own kind
            last = exc
    else:
        reason = str(last).splitlines()[0][:160] if last else "no converter"
        raise ConfigError(f"skl2onnx cannot convert a {type(model).__name__} ({reason})")
    (staging / "model.onnx").write_bytes(onnx_model.SerializeToString())
    _write_toml(staging, "onnx", model)


def _skops(model: Any, staging: Path) -> None:
    try:
        import skops.io as sio
    except ImportError:
        raise ConfigError("skops is not installed (pip install 'mlapi[import]')") from None
    path = staging / "model.skops"
    sio.dump(model, path)
    untrusted = sio.get_untrusted_types(file=path)
    # the user vouched for the pickle, and so for what it holds
    trusted = ["trusted_types = " + json.dumps(sorted(untrusted))] if untrusted else []
    _write_toml(staging, "sklearn", model, *trusted)


def _xgboost_onnx(model: Any, staging: Path, width: int) -> None:
    """XGBoost compares float32 features with float32 thresholds, as onnxruntime's
    tree ensemble does on a float input: the conversion keeps its arithmetic, and
    onnxruntime runs it 23x faster at one row (bench/trees.py)."""
    try:
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError:
        raise ConfigError("onnxmltools is not installed (pip install 'mlapi[import]')") from None
    try:
        onnx_model = convert_xgboost(
            model, initial_types=[("input", FloatTensorType([None, width]))], target_opset=15
        )
    except Exception as exc:  # the converter's own errors
        raise ConfigError(f"onnxmltools cannot convert it ({str(exc)[:160]})") from None
    (staging / "model.onnx").write_bytes(onnx_model.SerializeToString())
    _write_toml(staging, "onnx", model)


def _library_file(
    model: Any, library: str, staging: Path, rows: np.ndarray, generated: bool
) -> TabularImport:
    """XGBoost: ONNX when the check passes, else its JSON; LightGBM: its text file
    (it compares in double precision, which a float tree ensemble cannot match)."""
    notes: list[str] = []
    if library == "xgboost":
        try:
            _xgboost_onnx(model, staging, rows.shape[1])
            return _checked(model, "onnx", staging, rows, generated, notes)
        except ConfigError as exc:
            notes.append(f"ONNX: {exc}; kept as XGBoost's model.json instead")
            for leftover in staging.iterdir():
                leftover.unlink()
    if library == "xgboost":
        model.save_model(str(staging / "model.json"))
    else:
        model.booster_.save_model(str(staging / "model.txt"))
    _write_toml(staging, library, model)
    return _checked(model, library, staging, rows, generated, notes)


def _checked(
    model: Any,
    fmt: str,
    staging: Path,
    rows: np.ndarray,
    generated: bool,
    notes: list[str],
) -> TabularImport:
    """The staged folder served by its runtime against the original on ``rows``."""
    config = model_config.parse(model_config.read_raw(staging / "model.toml"))
    try:
        runtime_name, model_file = catalog.choose(staging, config)
        runtime = catalog.factory(runtime_name)(
            LoadContext(staging, model_file, config, False, intra_op_threads=1)
        )
        spec = runtime.signature.inputs[0]
        feed = rows.astype(np.float32 if spec.datatype == "FP32" else np.float64)
        served = runtime.predict({spec.name: feed}, runtime.signature.output_names())
        runtime.close()
    except MlapiError as exc:
        raise ConfigError(f"the {fmt} file does not serve: {exc.message}") from None
    if not generated:  # the user's sample rows: the reference drift is measured against
        save_reference(staging / "reference.npz", {spec.name: feed}, served)
    largest, ties = checks.compare_tabular(model, rows, served)
    if ties:
        notes.append(
            f"{ties} of {len(rows)} rows are exact ties between two classes: there the "
            f"{fmt} model may name the other one (probabilities equal within {checks.TOLERANCE:g})"
        )
    return TabularImport(fmt, len(rows), generated, largest, tuple(notes))
