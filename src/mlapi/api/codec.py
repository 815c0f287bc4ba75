"""Open Inference Protocol V2 tensors in JSON, both ways, with the binary tensor
data extension's framing (a JSON header, then the tensors' bytes). Decoding
validates against the model's signature with vectorised numpy checks (no
per-element Python loops for numbers); the checks every front shares are in
serving.codec."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from mlapi.errors import BadRequest
from mlapi.serving.codec import (
    InferRequest,
    array_from_binary,
    check_all_given,
    check_input,
    datatype_name,
    is_number,
    parameters_of,
    requested_outputs,
    text,
    to_binary,
)
from mlapi.serving.limits import DEFAULT_LIMITS, Limits, shown
from mlapi.tensors import DATATYPES, Signature

_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_NUMBER_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


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
    parameters = parameters_of(document, "request")
    inputs = _decode_inputs(document.get("inputs"), signature, binary, limits)
    names, binary_outputs = requested_outputs(
        document.get("outputs"), signature, bool(parameters.get("binary_data_output", False))
    )
    return InferRequest(request_id, inputs, names, binary_outputs)


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
    parameters = parameters_of(item, f"input '{shown(name)}'")
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


def json_data(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OUS":
        return [text(name, item) for item in array.ravel().tolist()]
    return np.ascontiguousarray(array).ravel()
