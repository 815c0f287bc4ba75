"""Property-based tests of the tensor codecs: any tensor survives JSON and binary
round trips unchanged, and no input whatever makes the decoder fail with anything
but a 4xx refusal."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlapi.api import codec
from mlapi.errors import BadRequest, PayloadTooLarge
from mlapi.serving.limits import Limits
from mlapi.tensors import DATATYPES, Signature, TensorSpec

NUMERIC = sorted(name for name in DATATYPES if name != "BYTES")
REFUSALS = (BadRequest, PayloadTooLarge)  # 400, or 413 past MLAPI_MAX_ELEMENTS
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)


def _signature(datatype: str, ndim: int) -> Signature:
    return Signature(
        inputs=(TensorSpec("x", datatype, (-1,) * ndim),),
        outputs=(TensorSpec("y", datatype, (-1,) * ndim),),
    )


@st.composite
def tensors(draw: Any) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(NUMERIC))
    dtype = DATATYPES[datatype]
    elements = None
    if dtype.kind == "f":  # finite values the type can hold (JSON has no NaN/inf)
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
    array = draw(hnp.arrays(dtype, SHAPES, elements=elements))
    return datatype, array


@given(tensors())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_numeric_tensor_survives_json(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "data": array.ravel().tolist(),
                }
            ]
        }
    )
    parsed = codec.parse_infer(body, None, _signature(datatype, array.ndim))
    np.testing.assert_array_equal(parsed.inputs["x"], array)
    rendered, header = codec.render_infer("m", 1, parsed, {"y": array})
    assert header is None
    (output,) = orjson.loads(rendered)["outputs"]
    assert output["datatype"] == datatype and output["shape"] == list(array.shape)
    restored = np.asarray(output["data"], dtype=DATATYPES[datatype]).reshape(array.shape)
    np.testing.assert_array_equal(restored, array)


@given(tensors())
@settings(max_examples=300)
def test_any_numeric_tensor_survives_binary(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    parsed = codec.parse_infer(
        header + array.tobytes(), str(len(header)), _signature(datatype, array.ndim)
    )
    np.testing.assert_array_equal(parsed.inputs["x"], array)
    rendered, length = codec.render_infer("m", 1, parsed, {"y": array})
    assert length is not None
    restored = np.frombuffer(rendered[length:], dtype=DATATYPES[datatype]).reshape(array.shape)
    np.testing.assert_array_equal(restored, array)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=12))
def test_any_bytes_tensor_survives_binary(items: list[bytes]) -> None:
    raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [len(items)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    parsed = codec.parse_infer(header + raw, str(len(header)), _signature("BYTES", 1))
    assert parsed.inputs["x"].tolist() == items
    rendered, length = codec.render_infer("m", 1, parsed, {"y": parsed.inputs["x"]})
    assert length is not None and rendered[length:] == raw


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "datatype",
                    "shape",
                    "data",
                    "parameters",
                    "inputs",
                    "outputs",
                    "id",
                    "binary_data_size",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(JSON_VALUES, st.sampled_from([*NUMERIC, "BYTES"]))
@settings(max_examples=500)
def test_no_document_breaks_the_decoder_with_anything_but_a_bad_request(
    document: Any, datatype: str
) -> None:
    try:
        body = orjson.dumps(document)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits
        return
    try:
        parsed = codec.parse_infer(body, None, _signature(datatype, 1))
    except REFUSALS as exc:
        assert exc.message and len(exc.message) < 1000
        return
    array = parsed.inputs["x"]
    assert array.ndim == 1 and array.shape[0] >= 1
    if array.dtype.kind == "f":
        assert all(math.isfinite(v) for v in array.tolist())


MUTATIONS = ("none", "datatype", "shape", "element", "nesting", "count")


@st.composite
def mutated_requests(draw: Any) -> tuple[dict[str, Any], str, np.ndarray, str]:
    """A well-formed request for a real tensor with at most one thing broken in its
    tensor part, so that decoding reaches the tensor and its checks (random whole
    documents almost never get past the outer fields)."""
    datatype, array = draw(tensors())
    item: dict[str, Any] = {
        "name": "x",
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "datatype":
        item["datatype"] = draw(st.sampled_from([*NUMERIC, "BYTES", "FP128", "", "fp32"]))
    elif mutation == "shape":
        index = draw(st.integers(0, array.ndim - 1))
        item["shape"][index] = draw(st.integers(-3, 2**40) | st.just(True) | st.just(1.5))
    elif mutation == "element" and array.size:
        index = draw(st.integers(0, array.size - 1))
        edge = st.sampled_from([1e39, -1e39, 1e308, 2**63, -(2**63) - 1, 2**64, 256, -129, 0.5])
        item["data"][index] = draw(edge | JSON_VALUES | st.integers(-(2**70), 2**70))
    elif mutation == "nesting":
        item["data"] = array.tolist() if array.ndim > 1 else [item["data"]]
    elif mutation == "count":
        item["data"] = item["data"] + item["data"][:1] if draw(st.booleans()) else item["data"][1:]
    return {"inputs": [item]}, datatype, array, mutation


@given(mutated_requests())
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_a_tensor_with_one_thing_wrong_is_refused_or_decoded_exactly(
    case: tuple[dict[str, Any], str, np.ndarray, str],
) -> None:
    document, datatype, array, mutation = case
    try:
        body = orjson.dumps(document)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        parsed = codec.parse_infer(body, None, _signature(datatype, array.ndim))
    except REFUSALS as exc:
        assert mutation != "none", exc.message  # a valid tensor is never refused
        assert exc.message and len(exc.message) < 1000
        return
    decoded = parsed.inputs["x"]
    assert decoded.dtype == DATATYPES[datatype]
    assert list(decoded.shape) == document["inputs"][0]["shape"]
    if mutation in ("none", "nesting"):
        np.testing.assert_array_equal(decoded, array)  # same values, flat or nested
    if decoded.dtype.kind == "f":
        assert np.isfinite(decoded).all()


TRICKY_TEXT = st.text(alphabet=st.sampled_from(list(',:"\\[]{} a\u00e9')), max_size=12)


@given(
    st.lists(TRICKY_TEXT, min_size=1, max_size=40)
    | st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    TRICKY_TEXT,
)
@example(['"' + "," * 11] * 40, "")  # an escaped quote, then commas still in the string
@example(["\\", "," * 12] * 20, "\\")  # an escaped backslash, then the string's end
@settings(max_examples=400)
def test_the_json_pre_check_never_refuses_a_request_within_the_element_cap(
    data: list[Any], note: str
) -> None:
    """Strings full of commas, colons, quotes and backslashes (escaped in the JSON)
    cannot push a request at the cap over it before it is parsed."""
    datatype = "BYTES" if isinstance(data[0], str) else "INT64"
    document = {
        "id": note,
        "parameters": {note: note},
        "inputs": [
            {"name": "x", "datatype": datatype, "shape": [len(data)], "data": data},
        ],
    }
    body = orjson.dumps(document)
    limits = Limits(max_elements=len(data))
    limits.check_json(body)
    parsed = codec.parse_infer(body, None, _signature(datatype, 1), limits)
    assert len(parsed.inputs["x"]) == len(data)


def test_a_json_body_far_over_the_element_cap_is_refused_before_it_is_parsed() -> None:
    document = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [400], "data": [0] * 400}]}
    body = orjson.dumps(document)[:-3]  # cut short: parsing it would be a 400
    with pytest.raises(PayloadTooLarge, match="MLAPI_MAX_ELEMENTS"):
        codec.parse_infer(body, None, _signature("INT64", 1), Limits(max_elements=100))
    with pytest.raises(BadRequest, match="not valid JSON"):  # within the cap: parsed
        codec.parse_infer(body, None, _signature("INT64", 1), Limits(max_elements=400))
