"""Tensors as every front sees them: the checks an input gets whatever carries its
data (its name, datatype and shape against the model's signature, the request's
elements against the limit), the outputs a request asks for, and the Open
Inference Protocol's binary tensor encoding (little-endian arrays, BYTES as
length-prefixed items), which HTTP's binary extension and gRPC's raw contents
share. A shape is refused before anything that size is allocated."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from mlapi.errors import BadRequest
from mlapi.serving.limits import MAX_DIMS, Limits, shown
from mlapi.tensors import DATATYPES, Signature, TensorSpec, datatype_of

_OUTPUT_KEYS = frozenset({"name", "parameters"})
MAX_ANY_OUTPUTS = 256  # outputs a request may name of a model that declares none
_U32 = struct.Struct("<I")


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]  # what to compute and return, in order
    binary_outputs: frozenset[str]


class CheckedInput(NamedTuple):
    name: str
    datatype: str
    dims: tuple[int, ...]
    size: int  # elements of this input
    elements: int  # elements of the request so far, this input included


def parameters_of(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' of {where} must be an object")
    return parameters


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', '①' and fullwidth digits."""
    return text.isascii() and text.isdigit()


def check_inputs_count(inputs: int, signature: Signature) -> None:
    """A request gives at most the inputs its model takes, checked before any of them
    is read (15 million empty entries in a gRPC message would each become a dict)."""
    if not signature.dynamic and inputs > len(signature.inputs):
        raise BadRequest(
            f"the request has {inputs} inputs, more than the model's {len(signature.inputs)}: "
            f"an input is unknown or given more than once"
        )


def check_outputs_count(outputs: int, signature: Signature) -> None:
    """A request asks for at most the outputs its model gives (MAX_ANY_OUTPUTS of one
    that declares none), checked before any is looked at: each is compared with those
    before it, and 3 million entries made that a 7 s stall."""
    most = len(signature.outputs) if signature.outputs else MAX_ANY_OUTPUTS
    if outputs > most:
        raise BadRequest(
            f"the request asks for {outputs} outputs, more than the model's {most}: an output "
            f"is unknown or requested more than once"
        )


def check_all_given(inputs: dict[str, np.ndarray], signature: Signature) -> None:
    """Every input the model declares is there (a dynamic signature takes any)."""
    if not signature.dynamic and len(inputs) != len(signature.inputs):
        missing = [spec.name for spec in signature.inputs if spec.name not in inputs]
        raise BadRequest(f"missing input(s) {missing}")


def check_input(
    index: int,
    name: Any,
    datatype: Any,
    shape: Any,
    signature: Signature,
    elements: int,
    limits: Limits,
) -> CheckedInput:
    """The checks an input gets whatever carries its data (JSON, binary, gRPC): its
    name, datatype and shape against the signature, and the request's elements so
    far against the limit."""
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{index}].name must be a non-empty string")
    spec = signature.input(name)
    if spec is None and not signature.dynamic:
        expected = [s.name for s in signature.inputs]
        raise BadRequest(f"unknown input '{shown(name)}' (the model takes {expected})")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"input '{shown(name)}': unknown datatype '{shown(datatype)}'")
    if spec is not None and datatype != spec.datatype:
        raise BadRequest(
            f"input '{shown(name)}' has datatype {datatype}, the model expects {spec.datatype}"
        )
    dims = shape_of(name, shape, spec)
    count = math.prod(dims)
    elements += count
    limits.check_elements(name, elements)
    return CheckedInput(name, datatype, dims, count, elements)


def shape_of(name: str, shape: Any, spec: TensorSpec | None) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise BadRequest(
            f"input '{shown(name)}': 'shape' must be an array of at most {MAX_DIMS} ints"
        )
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise BadRequest(f"input '{shown(name)}': shape {shape[:MAX_DIMS]} must hold ints >= 1")
    dims = tuple(shape)
    if spec is not None and not spec.accepts_shape(dims):
        raise BadRequest(
            f"input '{shown(name)}' has shape {list(dims)}, the model expects {list(spec.shape)} "
            f"(-1: any size)"
        )
    return dims


def array_from_binary(
    name: str, datatype: str, dims: tuple[int, ...], count: int, chunk: bytes, limits: Limits
) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_from_binary(name, dims, count, chunk, limits)
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise BadRequest(
            f"input '{shown(name)}': binary_data_size is {len(chunk)} bytes, shape {list(dims)} "
            f"of {datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(dims)


def _bytes_from_binary(
    name: str, dims: tuple[int, ...], count: int, chunk: bytes, limits: Limits
) -> np.ndarray:
    items: list[bytes] = []
    position = 0
    while position < len(chunk):
        if position + 4 > len(chunk) or len(items) >= count:
            raise BadRequest(f"input '{shown(name)}': malformed BYTES binary data")
        (length,) = _U32.unpack_from(chunk, position)
        limits.check_bytes_element(name, length)
        position += 4
        if position + length > len(chunk):
            raise BadRequest(f"input '{shown(name)}': malformed BYTES binary data")
        items.append(chunk[position : position + length])
        position += length
    if len(items) != count:
        raise BadRequest(
            f"input '{shown(name)}' has {len(items)} values but shape {list(dims)} needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(dims)


def requested_outputs(
    items: Any, signature: Signature, binary_default: bool
) -> tuple[tuple[str, ...], frozenset[str]]:
    if items is None:
        every = signature.output_names()
        return every, frozenset(every) if binary_default else frozenset()
    if not isinstance(items, list):
        raise BadRequest("'outputs' must be an array")
    check_outputs_count(len(items), signature)
    known = set(signature.output_names())
    names: list[str] = []
    binary: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.keys() - _OUTPUT_KEYS:
            raise BadRequest(
                f"outputs[{index}] must be an object with 'name' and optional 'parameters'"
            )
        name = item.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"outputs[{index}].name must be a string")
        if name not in known and not (signature.dynamic and not known):
            raise BadRequest(f"unknown output '{shown(name)}' (the model gives {sorted(known)})")
        if name in names:
            raise BadRequest(f"output '{shown(name)}' is requested more than once")
        parameters = parameters_of(item, f"output '{shown(name)}'")
        if "classification" in parameters:
            raise BadRequest("the classification extension is not supported")
        if bool(parameters.get("binary_data", binary_default)):
            binary.add(name)
        names.append(name)
    return tuple(names), frozenset(binary)


def datatype_name(name: str, array: np.ndarray) -> str:
    try:
        return datatype_of(array)
    except TypeError:
        raise BadRequest(f"output '{shown(name)}' has a dtype the protocol cannot carry") from None


def text(name: str, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                f"output '{shown(name)}' holds bytes that are not UTF-8: request it with "
                f"binary_data=true"
            ) from None
    return str(item)


def as_bytes(item: object) -> bytes:
    """A BYTES element as bytes: as it is, or its text in UTF-8."""
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


def to_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OUS":
        parts = []
        for item in array.ravel().tolist():
            data = as_bytes(item)
            parts.append(_U32.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
