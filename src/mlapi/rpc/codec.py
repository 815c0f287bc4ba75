"""ModelInferRequest -> tensors -> ModelInferResponse: the gRPC codec, checked by
the same rules as the HTTP one (it calls the same shape, size, element and output
checks of api.codec), so a request means the same and is refused with the same
message on either front.

Tensor data comes in one of two forms. Raw: ``raw_input_contents`` holds one
little-endian buffer per input, in the order of ``inputs`` (what tritonclient
always sends; it becomes an array without a copy). Typed: each input's
``contents`` holds a list in the field its datatype names. The reply is raw when
the request was raw (tritonclient reads only raw outputs), typed otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from mlapi.errors import BadRequest
from mlapi.rpc import messages
from mlapi.serving import codec
from mlapi.serving.codec import InferRequest as InferRequest
from mlapi.serving.limits import Limits, shown
from mlapi.tensors import DATATYPES, Signature

# The field of InferTensorContents that carries each datatype, and that field's
# own element type (what protobuf can hold, checked against the datatype's range).
CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}


def parse_message(data: bytes, message_type: Any) -> Any:
    """A request message from its bytes; one that does not parse is the client's
    error (INVALID_ARGUMENT), not the server's (grpc's own parsing says INTERNAL)."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise BadRequest(
            f"the request is not a valid {message_type.DESCRIPTOR.name} message"
        ) from None


def parse_infer(request: Any, signature: Signature, limits: Limits) -> tuple[InferRequest, bool]:
    """The request's tensors and wanted outputs, and whether it was sent raw."""
    tensors = request.inputs
    raw = request.raw_input_contents
    if not tensors:
        raise BadRequest("'inputs' must be a non-empty array")
    codec.check_inputs_count(len(tensors), signature)
    outputs = request.outputs
    codec.check_outputs_count(len(outputs), signature)
    if raw and len(raw) != len(tensors):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs: give one "
            f"per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    elements = 0
    for index, tensor in enumerate(tensors):
        name, datatype, dims, count, elements = codec.check_input(
            index, tensor.name, tensor.datatype, list(tensor.shape), signature, elements, limits
        )
        if name in inputs:
            raise BadRequest(f"input '{shown(name)}' is given more than once")
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input '{shown(name)}' has both contents and raw_input_contents")
            chunk = raw[index]
            inputs[name] = codec.array_from_binary(name, datatype, dims, count, chunk, limits)
        else:
            inputs[name] = _from_contents(name, datatype, dims, count, tensor, limits)
    codec.check_all_given(inputs, signature)
    wanted = [{"name": item.name, "parameters": _parameters(item.parameters)} for item in outputs]
    names, _ = codec.requested_outputs(wanted or None, signature, False)
    return InferRequest(request.id or None, inputs, names, frozenset()), bool(raw)


def _from_contents(
    name: str, datatype: str, dims: tuple[int, ...], count: int, tensor: Any, limits: Limits
) -> np.ndarray:
    if datatype not in CONTENTS:
        raise BadRequest(
            f"input '{shown(name)}': {datatype} can only be sent in raw_input_contents"
        )
    field, wire = CONTENTS[datatype]
    contents = tensor.contents
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise BadRequest(
            f"input '{shown(name)}' of datatype {datatype} takes its data in {field}, "
            f"not {others[0]}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise BadRequest(
            f"input '{shown(name)}' has {len(values)} values but shape {list(dims)} needs {count}"
        )
    if datatype == "BYTES":
        longest = max(map(len, values), default=0)
        limits.check_bytes_element(name, longest)
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(dims)
    parsed = np.array(values, dtype=wire)
    if wire.kind == "f" and not np.isfinite(parsed).all():
        raise BadRequest(
            f"input '{shown(name)}': NaN and infinite values are not numbers in typed "
            f"contents (as in JSON); send them in raw_input_contents"
        )
    target = DATATYPES[datatype]
    if target.itemsize < wire.itemsize and parsed.size:
        info = np.iinfo(target)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise BadRequest(f"input '{shown(name)}': a value is out of range for {datatype}")
    return parsed.astype(target, copy=False).reshape(dims)


def _parameters(parameters: Any) -> dict[str, object]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
        for key, value in parameters.items()
    }


def render_infer(
    model_name: str, version: int, request: InferRequest, results: dict[str, np.ndarray], raw: bool
) -> Any:
    """The ModelInferResponse: raw outputs when the request was raw, or when an
    output has a datatype that typed contents cannot carry (FP16)."""
    response = messages.ModelInferResponse(model_name=model_name, model_version=str(version))
    if request.id is not None:
        response.id = request.id
    typed = []
    for name, array in results.items():
        datatype = codec.datatype_name(name, array)
        typed.append((response.outputs.add(name=name, datatype=datatype, shape=array.shape), array))
    if raw or any(output.datatype not in CONTENTS for output, _ in typed):
        response.raw_output_contents.extend(codec.to_binary(array) for _, array in typed)
        return response
    for output, array in typed:
        field = getattr(output.contents, CONTENTS[output.datatype][0])
        if output.datatype == "BYTES":
            field.extend(codec.as_bytes(item) for item in array.ravel().tolist())
        else:
            field.extend(array.ravel().tolist())
    return response
