"""Runtimes by name, and the choice of runtime and model file for a version folder."""

from __future__ import annotations

import importlib
from pathlib import Path

from mlapi.errors import ModelLoadError
from mlapi.repository.config import ModelConfig
from mlapi.repository.safety import PICKLE_SUFFIXES
from mlapi.runtimes.base import RuntimeFactory

_BY_SUFFIX = {".onnx": "onnx", ".skops": "sklearn", ".py": "python", ".ubj": "xgboost"}
# Names whose suffix alone says too little (.json, .txt): XGBoost's JSON, LightGBM's text.
_BY_NAME = {"model.json": "xgboost", "model.txt": "lightgbm"}
_PREFERRED = ("model.onnx", "model.skops", "model.py", "model.ubj", "model.json", "model.txt")
TOKENIZER = "tokenizer.json"


# name -> (module, class): imported on first use, so an unused runtime's libraries
# are never loaded.
_RUNTIMES = {
    "onnx": ("mlapi.runtimes.onnx", "OnnxRuntime"),
    "sklearn": ("mlapi.runtimes.sklearn", "SklearnRuntime"),
    "python": ("mlapi.runtimes.python", "PythonRuntime"),
    "text": ("mlapi.runtimes.text", "TextRuntime"),
    "xgboost": ("mlapi.runtimes.trees", "XGBoostRuntime"),
    "lightgbm": ("mlapi.runtimes.trees", "LightGBMRuntime"),
}


def factory(name: str) -> RuntimeFactory:
    """The runtime class for a name."""
    if name not in _RUNTIMES:
        raise ModelLoadError(f"unknown runtime '{name}' (known: {', '.join(_RUNTIMES)})")
    module, cls = _RUNTIMES[name]
    found: RuntimeFactory = getattr(importlib.import_module(module), cls)
    return found


def choose(version_dir: Path, config: ModelConfig) -> tuple[str, Path]:
    """(runtime name, model file) for a version folder."""
    if config.file:
        model_file = (version_dir / config.file).resolve()
        if version_dir.resolve() not in model_file.parents:
            raise ModelLoadError("model.toml 'file' must name a file inside the version folder")
        if not model_file.is_file():
            raise ModelLoadError(f"model file '{config.file}' is missing")
    else:
        model_file = _find_model_file(version_dir)
    runtime = config.runtime or _runtime_for(model_file)
    if runtime == "onnx" and config.runtime is None and (version_dir / TOKENIZER).is_file():
        runtime = "text"  # an encoder with its tokenizer beside it
    return runtime, model_file


def _find_model_file(version_dir: Path) -> Path:
    for name in _PREFERRED:
        if (version_dir / name).is_file():
            return version_dir / name
    files = sorted(p for p in version_dir.iterdir() if p.is_file())
    known = [p for p in files if p.suffix in _BY_SUFFIX or p.suffix in PICKLE_SUFFIXES]
    if len(known) == 1:
        return known[0]
    if not known:
        raise ModelLoadError(
            "no model file in the version folder (expected model.onnx, model.skops, model.py, "
            "model.json or model.ubj for XGBoost, model.txt for LightGBM)"
        )
    raise ModelLoadError(
        f"several model files {[p.name for p in known]}: name one with 'file' in model.toml"
    )


def _runtime_for(model_file: Path) -> str:
    if model_file.name in _BY_NAME:
        return _BY_NAME[model_file.name]
    suffix = model_file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return "sklearn"
    try:
        return _BY_SUFFIX[suffix]
    except KeyError:
        raise ModelLoadError(
            f"cannot tell the runtime of '{model_file.name}': set runtime in model.toml"
        ) from None
