"""A user's own Python class: ``model.py`` in the version folder defines a class
with ``load()`` (optionally taking the version folder) and ``predict(inputs)``
taking ``{name: numpy array}`` and returning ``{name: array}`` (or one array when
the model has one output). Code in the model folder is trusted like any code the
operator installs; pickle files beside it are still refused by the folder check."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from mlapi.errors import BadRequest, ModelLoadError
from mlapi.runtimes.base import LoadContext
from mlapi.tensors import Signature

_counter = 0


class PythonRuntime:
    platform = "python"

    def __init__(self, ctx: LoadContext) -> None:
        module = _import(ctx)
        self._module_name: str | None = module.__name__
        try:
            self._start(ctx, module)
        except BaseException:
            self.close()
            raise

    def _start(self, ctx: LoadContext, module: ModuleType) -> None:
        cls = _find_class(module, ctx.config.python_class)
        try:
            self._model = cls()
            load = getattr(self._model, "load", None)
            if callable(load):
                if inspect.signature(load).parameters:
                    load(ctx.model_dir)
                else:
                    load()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{cls.__name__}.load() failed: {type(exc).__name__}: {_short(exc)}"
            ) from None
        declared_in = ctx.config.inputs
        declared_out = ctx.config.outputs
        self.signature = Signature(
            inputs=declared_in or (),
            outputs=declared_out or (),
            dynamic=declared_in is None,
        )

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        result = self._model.predict(inputs)
        if not isinstance(result, dict):
            if len(self.signature.outputs) == 1:
                result = {self.signature.outputs[0].name: result}
            else:
                result = {"output": result}
        arrays = {str(name): np.asarray(value) for name, value in result.items()}
        if not output_names:
            return arrays
        missing = [name for name in output_names if name not in arrays]
        if missing:
            raise BadRequest(f"the model did not produce output(s) {missing}")
        return {name: arrays[name] for name in output_names}

    def close(self) -> None:
        """Free the model and forget its module, so that what the module holds goes
        with it (the registry collects the cycles a module makes with its functions)."""
        try:
            close = getattr(getattr(self, "_model", None), "close", None)
            if callable(close):
                close()
        finally:
            self._model = None
            if self._module_name is not None:
                sys.modules.pop(self._module_name, None)
                self._module_name = None


def _import(ctx: LoadContext) -> ModuleType:
    global _counter
    _counter += 1
    module_name = f"mlapi_user_model_{_counter}"
    spec = importlib.util.spec_from_file_location(module_name, ctx.model_file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"'{ctx.relative(ctx.model_file)}' cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(
            f"importing '{ctx.relative(ctx.model_file)}' failed: "
            f"{type(exc).__name__}: {_short(exc)}"
        ) from None
    return module


def _find_class(module: ModuleType, wanted: str | None) -> type[Any]:
    if wanted:
        cls = getattr(module, wanted, None)
        if not inspect.isclass(cls):
            raise ModelLoadError(f"python_class '{wanted}' is not a class in model.py")
        return cls
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and obj.__module__ == module.__name__
        and callable(getattr(obj, "predict", None))
    ]
    if len(candidates) != 1:
        names = sorted(c.__name__ for c in candidates)
        raise ModelLoadError(
            f"model.py must define exactly one class with predict() (found {names}); "
            f"or set python_class in model.toml"
        )
    return candidates[0]


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""
