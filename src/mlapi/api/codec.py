"""Open Inference Protocol V2 tensors on the wire: JSON and the binary tensor data
extension, both ways. Decoding validates against the model's signature with
vectorised numpy checks (no per-element Python loops for numbers), and refuses an
impossible shape before anything the size of that shape is allocated."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from mlapi.api.limits import DEFAULT_LIMITS, MAX_DIMS, Limits, shown
from mlapi.errors import BadRequest
from mlapi.tensors import DATATYPES, Signature, TensorSpec, datatype_of

_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_NUMBER_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
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


def loads_json(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None


def parse_infer(
    body: bytes, header_length: str | None, signature: Signature, limits: Limits = DEFAULT_LIMITS
) -> InferRequest:
    """Decode a V2 infer request (JSON, or JSON header + binary tensors)."""
    binary = b""
    if header_length is not None:
        if not is_number(header_length) or not 0 < int(header_length) <= len(body):
            raise BadRequest(
                "Inference-Header-Content-Length must be between 1 and the body length"
            )
        cut = int(header_length)
        limits.check_json(memoryview(body)[:cut])
        document = loads_json(memoryview(body)[:cut])
        binary = body[cut:]
    else:
        limits.check_json(body)
        document = loads_json(body)
    if not isinstance(document, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = document.keys() - _REQUEST_KEYS
    if unknown:
        raise BadRequest(f"unknown field(s) in request: {sorted(shown(k) for k in unknown)}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(document, "request")
    inputs = _decode_inputs(document.get("inputs"), signature, binary, limits)
    names, binary_outputs = requested_outputs(
        document.get("outputs"), signature, bool(parameters.get("binary_data_output", False))
    )
    return InferRequest(request_id, inputs, names, binary_outputs)


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' of {where} must be an object")
    return parameters


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', '①' and fullwidth digits."""
    return text.isascii() and text.isdigit()


def _decode_inputs(
    items: Any, signature: Signature, binary: bytes, limits: Limits
) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise BadRequest("'inputs' must be a non-empty array")
    inputs: dict[str, np.ndarray] = {}
    offset = elements = 0
    for index, item in enumerate(items):
        name, array, offset, elements = _decode_input(
            item, index, signature, binary, offset, elements, limits
        )
        if name in inputs:
            raise BadRequest(f"input '{shown(name)}' is given more than once")
        inputs[name] = array
    if offset != len(binary):
        raise BadRequest(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    check_all_given(inputs, signature)
    return inputs


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


def _decode_input(
    item: Any,
    index: int,
    signature: Signature,
    binary: bytes,
    offset: int,
    elements: int,
    limits: Limits,
) -> tuple[str, np.ndarray, int, int]:
    if not isinstance(item, dict):
        raise BadRequest(f"inputs[{index}] must be an object")
    unknown = item.keys() - _INPUT_KEYS
    if unknown:
        raise BadRequest(
            f"unknown field(s) in inputs[{index}]: {sorted(shown(k) for k in unknown)}"
        )
    name, datatype, dims, count, elements = check_input(
        index,
        item.get("name"),
        item.get("datatype"),
        item.get("shape"),
        signature,
        elements,
        limits,
    )
    parameters = _parameters(item, f"input '{shown(name)}'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise BadRequest(f"input '{shown(name)}' has both 'data' and binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"input '{shown(name)}': binary_data_size must be an int >= 0")
        if offset + size > len(binary):
            raise BadRequest(
                f"input '{shown(name)}': binary_data_size runs past the end of the body"
            )
        chunk = binary[offset : offset + size]
        array = array_from_binary(name, datatype, dims, count, chunk, limits)
        return name, array, offset + size, elements
    if "data" not in item:
        raise BadRequest(f"input '{shown(name)}' has no 'data' (and no binary_data_size)")
    return name, array_from_json(name, datatype, dims, item["data"], limits), offset, elements


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


def array_from_json(
    name: str, datatype: str, dims: tuple[int, ...], data: Any, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """A validated array of ``datatype`` and shape ``dims`` from JSON data (flat or nested)."""
    count = math.prod(dims)
    if not isinstance(data, list):
        raise BadRequest(f"input '{shown(name)}': 'data' must be an array")
    if datatype == "BYTES":
        return _bytes_from_json(name, dims, count, data, limits)
    try:
        parsed = np.asarray(data)
    except (ValueError, OverflowError, TypeError):
        raise BadRequest(
            f"input '{shown(name)}': 'data' is not a regular array of numbers"
        ) from None
    target = DATATYPES[datatype]
    if target == np.uint64 and parsed.dtype.kind == "f":
        parsed = _uint64_exactly(name, data)  # ints past 2**63 make numpy pick float64
    if parsed.dtype.kind not in _NUMBER_KINDS[target.kind]:
        kind = "strings" if parsed.dtype.kind in "US" else "values that are not " + datatype
        raise BadRequest(f"input '{shown(name)}': 'data' holds {kind}")
    if parsed.size != count:
        raise BadRequest(
            f"input '{shown(name)}' has {parsed.size} values but shape {list(dims)} needs {count}"
        )
    if target.kind in "iu" and parsed.size:
        info = np.iinfo(target)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise BadRequest(f"input '{shown(name)}': a value is out of range for {datatype}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = parsed.astype(target, copy=False)
    if target.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input '{shown(name)}': a value is out of range for {datatype}")
    return array.reshape(dims)


def _uint64_exactly(name: str, data: list[Any]) -> np.ndarray:
    """UINT64 data that numpy's type inference turned into float64 (a value of 2**63
    or more beside smaller ones): read as uint64 without rounding, ints only."""
    flat = np.asarray(data, dtype=object).ravel().tolist()
    if not all(type(v) is int and 0 <= v < 2**64 for v in flat):
        raise BadRequest(f"input '{shown(name)}': 'data' holds values that are not UINT64")
    return np.array(flat, dtype=np.uint64).reshape(np.shape(data))


def _bytes_from_json(
    name: str, dims: tuple[int, ...], count: int, data: list[Any], limits: Limits
) -> np.ndarray:
    flat: list[Any] = data
    if any(isinstance(item, list) for item in data):
        try:
            flat = np.asarray(data, dtype=object).ravel().tolist()
        except ValueError:
            raise BadRequest(f"input '{shown(name)}': 'data' is not a regular array") from None
    if len(flat) != count:
        raise BadRequest(
            f"input '{shown(name)}' has {len(flat)} values but shape {list(dims)} needs {count}"
        )
    if not all(isinstance(item, str) for item in flat):
        raise BadRequest(f"input '{shown(name)}': BYTES data must be strings")
    longest = max(map(len, flat), default=0)
    if longest * 4 > limits.max_bytes_element:  # up to 4 UTF-8 bytes per character
        limits.check_bytes_element(name, max(len(item.encode()) for item in flat))
    array = np.empty(count, dtype=object)
    array[:] = flat
    return array.reshape(dims)


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
        parameters = _parameters(item, f"output '{shown(name)}'")
        if "classification" in parameters:
            raise BadRequest("the classification extension is not supported")
        if bool(parameters.get("binary_data", binary_default)):
            binary.add(name)
        names.append(name)
    return tuple(names), frozenset(binary)


def render_infer(
    model_name: str, version: int, request: InferRequest, results: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs = []
    chunks = []
    for name, array in results.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_name(name, array),
            "shape": array.shape,
        }
        if name in request.binary_outputs:
            chunk = to_binary(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = json_data(name, array)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def datatype_name(name: str, array: np.ndarray) -> str:
    try:
        return datatype_of(array)
    except TypeError:
        raise BadRequest(f"output '{shown(name)}' has a dtype the protocol cannot carry") from None


def json_data(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OUS":
        return [text(name, item) for item in array.ravel().tolist()]
    return np.ascontiguousarray(array).ravel()


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
