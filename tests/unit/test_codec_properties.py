"""Property-based tests of the tensor codecs: any tensor survives JSON and binary
round trips unchanged, and no input whatever makes the decoder fail with anything
but a BadRequest."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlapi.api import codec
from mlapi.errors import BadRequest
from mlapi.tensors import DATATYPES, Signature, TensorSpec

NUMERIC = sorted(name for name in DATATYPES if name != "BYTES")
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
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
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
    except BadRequest as exc:
        assert exc.message and len(exc.message) < 1000
        return
    array = parsed.inputs["x"]
    assert array.ndim == 1 and array.shape[0] >= 1
    if array.dtype.kind == "f":
        assert all(math.isfinite(v) for v in array.tolist())
