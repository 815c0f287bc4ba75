"""ONNX Runtime: the fast path and the default. The signature is read from the
graph unless ``model.toml`` declares one."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlapi.errors import ModelLoadError
from mlapi.runtimes.base import LoadContext
from mlapi.tensors import Signature, TensorSpec

log = logging.getLogger("mlapi.runtime.onnx")

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(node: ort.NodeArg) -> TensorSpec | None:
    datatype = _ORT_TYPES.get(node.type)
    if datatype is None:
        return None
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in (node.shape or []))
    return TensorSpec(node.name, datatype, shape)


def _providers(device: str) -> list[str]:
    """CUDA first when asked for (or on auto, when this onnxruntime build has it)."""
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class RunSwitch:
    """Stops the onnxruntime run in progress from another thread: each ``predict``
    takes fresh run options (``begin``), and ``interrupt`` sets their terminate
    flag, which onnxruntime checks between the graph's nodes. An interrupt between
    two runs finds none and does nothing."""

    def __init__(self) -> None:
        self._current: ort.RunOptions | None = None

    def begin(self) -> ort.RunOptions:
        self._current = ort.RunOptions()
        return self._current

    def end(self) -> None:
        self._current = None

    def interrupt(self) -> bool:
        current = self._current
        if current is None:
            return False
        current.terminate = True
        return True


class OnnxRuntime:
    platform = "onnxruntime_onnx"

    def __init__(self, ctx: LoadContext) -> None:
        self._session, self.from_cache = open_session(ctx)
        self._switch = RunSwitch()
        self.providers = self._session.get_providers()
        if ctx.device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            log.warning(
                "MLAPI_DEVICE=cuda but CUDA is not available to onnxruntime "
                "(needs onnxruntime-gpu and a GPU): falling back to CPU"
            )
        graph_inputs = [_spec(node) for node in self._session.get_inputs()]
        if any(spec is None for spec in graph_inputs):
            raise ModelLoadError("the ONNX graph has a non-tensor input; only tensors are served")
        graph_outputs = [s for s in map(_spec, self._session.get_outputs()) if s is not None]
        if not graph_outputs:
            raise ModelLoadError("the ONNX graph has no tensor output")
        self.signature = Signature(
            inputs=_declared(ctx.config.inputs, tuple(s for s in graph_inputs if s), "input"),
            outputs=_declared(ctx.config.outputs, tuple(graph_outputs), "output"),
        )
        self._string_inputs = {s.name for s in self.signature.inputs if s.datatype == "BYTES"}

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if self._string_inputs:
            inputs = {
                name: _as_str(array) if name in self._string_inputs else array
                for name, array in inputs.items()
            }
        try:
            results = self._session.run(list(output_names), inputs, self._switch.begin())
        finally:
            self._switch.end()
        return dict(zip(output_names, results, strict=True))

    def interrupt(self) -> bool:
        return self._switch.interrupt()

    def close(self) -> None:
        del self._session


def open_session(ctx: LoadContext) -> tuple[ort.InferenceSession, bool]:
    """An onnxruntime session for ``ctx.model_file``, with the server's thread budget
    (one inter-op thread, intra-op threads per worker); (session, from the cache?)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if ctx.intra_op_threads:
        options.intra_op_num_threads = ctx.intra_op_threads
    options.log_severity_level = 3
    providers = _providers(ctx.device)
    try:
        return _session(ctx.model_file.read_bytes(), options, providers, ctx.cache_dir)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = first_line.replace(str(ctx.model_dir), "<model>")[:300]
        raise ModelLoadError(
            f"'{ctx.relative(ctx.model_file)}' is not a valid ONNX model: {detail}"
        ) from None


def _session(
    data: bytes, options: ort.SessionOptions, providers: list[str], cache_dir: Path | None
) -> tuple[ort.InferenceSession, bool]:
    """A session for the model bytes. With a cache folder, the graph optimised on
    first load is kept there (keyed by the model's hash, the onnxruntime version,
    the providers and the machine) and later loads skip the optimisation passes."""
    ort.set_default_logger_severity(3)  # warnings such as telemetry on a read-only disk
    if cache_dir is None:
        return ort.InferenceSession(data, options, providers=providers), False
    key = hashlib.sha256(data)
    key.update(f"|{ort.__version__}|{','.join(providers)}|{platform.machine()}".encode())
    cached = cache_dir / "onnx" / f"{key.hexdigest()[:40]}.onnx"
    if cached.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), options, providers=providers), True
        except Exception:
            log.warning("cached optimised graph %s is unusable; rebuilding it", cached.name)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        options.optimized_model_filepath = str(partial)
        session = ort.InferenceSession(data, options, providers=providers)
        os.replace(partial, cached)  # atomic: a reader never sees half a file
    except OSError as exc:
        log.warning(
            "model cache %s is not writable (%s); continuing without it",
            cache_dir,
            type(exc).__name__,
        )
        options.optimized_model_filepath = ""
        session = ort.InferenceSession(data, options, providers=providers)
    return session, False


def _declared(
    declared: tuple[TensorSpec, ...] | None, graph: tuple[TensorSpec, ...], kind: str
) -> tuple[TensorSpec, ...]:
    """The config's specs when given (checked against the graph), else the graph's."""
    if declared is None:
        return graph
    by_name = {spec.name: spec for spec in graph}
    for spec in declared:
        actual = by_name.get(spec.name)
        if actual is None:
            raise ModelLoadError(
                f"model.toml declares {kind} '{spec.name}' but the graph has {sorted(by_name)}"
            )
        if actual.datatype != spec.datatype or len(actual.shape) != len(spec.shape):
            raise ModelLoadError(
                f"model.toml {kind} '{spec.name}' is {spec.datatype}{list(spec.shape)} "
                f"but the graph says {actual.datatype}{list(actual.shape)}"
            )
    if kind == "input" and {s.name for s in declared} != set(by_name):
        raise ModelLoadError("model.toml must declare every input of the graph")
    return declared


def _as_str(array: np.ndarray) -> np.ndarray:
    flat = [
        item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        for item in array.ravel()
    ]
    return np.array(flat, dtype=object).reshape(array.shape)
