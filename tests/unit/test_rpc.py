"""The gRPC messages and codec: the committed descriptors are what the .proto files
compile to, their messages are field for field those tritonclient and grpc's own
health client speak, and every datatype goes through typed contents and raw buffers
both ways with its range checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from mlapi.errors import BadRequest, PayloadTooLarge
from mlapi.rpc import codec, messages
from mlapi.serving.codec import to_binary
from mlapi.serving.limits import Limits
from mlapi.tensors import Signature, TensorSpec

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_descriptor_is_what_the_proto_compiles_to() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _fields(descriptor: Any) -> dict[str, object]:
    shape: dict[str, object] = {}
    for field in descriptor.fields:
        kind = field.message_type.full_name if field.message_type else field.type
        shape[field.name] = (field.number, kind, field.is_repeated)
    for nested in descriptor.nested_types:
        shape[nested.name] = _fields(nested)
    for enum in descriptor.enum_types:
        shape[enum.name] = [(value.name, value.number) for value in enum.values]
    return shape


@pytest.mark.parametrize(
    "name",
    [
        "ModelInferRequest",
        "ModelInferResponse",
        "InferTensorContents",
        "InferParameter",
        "ModelMetadataResponse",
        "ModelReadyRequest",
        "ServerMetadataResponse",
        "RepositoryIndexResponse",
        "RepositoryModelLoadRequest",
        "ModelRepositoryParameter",
    ],
)
def test_messages_match_tritonclients_field_for_field(name: str) -> None:
    ours = messages.message_class(name)
    assert _fields(ours.DESCRIPTOR) == _fields(service_pb2.DESCRIPTOR.message_types_by_name[name])


def test_the_service_path_is_the_protocols() -> None:
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert theirs.full_name == messages.SERVICE
    assert set(messages.method_names()) <= {m.name for m in theirs.methods}


@pytest.mark.parametrize(
    "name", ["HealthCheckRequest", "HealthCheckResponse", "HealthListRequest", "HealthListResponse"]
)
def test_health_messages_match_grpcs_own_field_for_field(name: str) -> None:
    ours = messages.message_class(name, "grpc.health.v1")
    assert _fields(ours.DESCRIPTOR) == _fields(health_pb2.DESCRIPTOR.message_types_by_name[name])


def test_the_health_service_is_the_standards() -> None:
    theirs = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert theirs.full_name == messages.HEALTH_SERVICE
    assert set(messages.method_names(messages.HEALTH_SERVICE)) == {m.name for m in theirs.methods}


def _dynamic() -> Signature:
    return Signature(inputs=(), outputs=(), dynamic=True)


VALUES = {
    "BOOL": [True, False, True, True],
    "INT8": [-128, 0, 5, 127],
    "INT16": [-32768, 1, 2, 32767],
    "INT32": [-(2**31), 0, 1, 2**31 - 1],
    "INT64": [-(2**63), 0, 1, 2**63 - 1],
    "UINT8": [0, 1, 200, 255],
    "UINT16": [0, 1, 2, 65535],
    "UINT32": [0, 1, 2, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "FP32": [0.5, -1.25, 3.0, 2.0**100],  # exact in float32
    "FP64": [0.1, -2.5, 1e300, 7.0],
    "BYTES": [b"a", b"", b"\xff\x00", "é".encode()],
}


@pytest.mark.parametrize("datatype", sorted(VALUES))
def test_every_datatype_round_trips_typed_and_raw(datatype: str) -> None:
    values = VALUES[datatype]
    typed = messages.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, codec.CONTENTS[datatype][0]).extend(values)
    parsed, raw = codec.parse_infer(typed, _dynamic(), Limits())
    assert not raw and parsed.inputs["x"].shape == (2, 2)
    assert parsed.inputs["x"].ravel().tolist() == values
    response = codec.render_infer("m", 1, parsed, {"y": parsed.inputs["x"]}, raw=False)
    (output,) = response.outputs
    assert output.datatype == datatype and list(output.shape) == [2, 2]
    assert list(getattr(output.contents, codec.CONTENTS[datatype][0])) == values
    # the same tensor sent raw comes back raw, byte for byte
    raw_request = messages.ModelInferRequest(model_name="m")
    raw_request.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    buffer = to_binary(parsed.inputs["x"])
    raw_request.raw_input_contents.append(buffer)
    parsed_raw, raw = codec.parse_infer(raw_request, _dynamic(), Limits())
    assert raw and parsed_raw.inputs["x"].ravel().tolist() == values
    raw_response = codec.render_infer("m", 1, parsed_raw, {"y": parsed_raw.inputs["x"]}, raw=True)
    assert list(raw_response.raw_output_contents) == [buffer]
    assert not raw_response.outputs[0].HasField("contents")


@pytest.mark.parametrize(
    ("datatype", "values"),
    [("INT8", [128]), ("INT8", [-129]), ("INT16", [40000]), ("UINT8", [256]), ("UINT16", [65536])],
)
def test_typed_values_out_of_the_datatypes_range_are_refused(
    datatype: str, values: list[int]
) -> None:
    request = messages.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1])
    getattr(tensor.contents, codec.CONTENTS[datatype][0]).extend(values)
    with pytest.raises(BadRequest, match=f"out of range for {datatype}"):
        codec.parse_infer(request, _dynamic(), Limits())


def test_fp16_travels_raw_only_and_its_outputs_come_back_raw() -> None:
    request = messages.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP16", shape=[2])
    with pytest.raises(BadRequest, match="FP16 can only be sent in raw_input_contents"):
        codec.parse_infer(request, _dynamic(), Limits())
    request.raw_input_contents.append(np.array([1.5, -2], np.float16).tobytes())
    parsed, raw = codec.parse_infer(request, _dynamic(), Limits())
    assert raw and parsed.inputs["x"].dtype == np.float16
    response = codec.render_infer("m", 1, parsed, {"y": parsed.inputs["x"]}, raw=False)
    assert np.frombuffer(response.raw_output_contents[0], np.float16).tolist() == [1.5, -2]


def test_bytes_elements_and_element_counts_have_the_http_limits() -> None:
    limits = Limits(max_elements=10, max_bytes_element=4)
    request = messages.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"ok", b"too long"])
    with pytest.raises(PayloadTooLarge, match="MLAPI_MAX_BYTES_ELEMENT"):
        codec.parse_infer(request, _dynamic(), limits)
    many = messages.ModelInferRequest(model_name="m")
    many.inputs.add(name="x", datatype="FP32", shape=[11])
    with pytest.raises(PayloadTooLarge, match="MLAPI_MAX_ELEMENTS"):
        codec.parse_infer(many, _dynamic(), limits)


def test_a_declared_signature_is_held_to() -> None:
    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 2)),), outputs=(TensorSpec("y", "FP32", (-1,)),)
    )
    request = messages.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(
        [1, 2]
    )
    request.outputs.add(name="z")
    with pytest.raises(BadRequest, match="unknown output 'z'"):
        codec.parse_infer(request, signature, Limits())
    del request.outputs[:]
    parsed, _ = codec.parse_infer(request, signature, Limits())
    assert parsed.output_names == ("y",)
