from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest

from mlapi.api import codec
from mlapi.errors import BadRequest
from mlapi.serving.limits import Limits
from mlapi.tensors import DATATYPES, Signature, TensorSpec

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def _signature(datatype: str = "FP32", shape: tuple[int, ...] = (-1, 4)) -> Signature:
    return Signature(
        inputs=(TensorSpec("x", datatype, shape),),
        outputs=(TensorSpec("y", "FP32", (-1,)), TensorSpec("z", "INT64", (-1,))),
    )


def _request(**fields: Any) -> bytes:
    item = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}
    item.update(fields)
    return orjson.dumps({"inputs": [item]})


def _sample(datatype: str, count: int) -> np.ndarray:
    if datatype == "BOOL":
        return np.arange(count) % 2 == 0
    values = np.arange(count) % 100
    return values.astype(DATATYPES[datatype])


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_round_trip_every_numeric_datatype(datatype: str) -> None:
    expected = _sample(datatype, 6).reshape(2, 3)
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": [2, 3],
                    "data": expected.ravel().tolist(),
                }
            ]
        }
    )
    parsed = codec.parse_infer(body, None, _signature(datatype, (-1, 3)))
    array = parsed.inputs["x"]
    assert array.dtype == DATATYPES[datatype] and array.shape == (2, 3)
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_round_trip_every_numeric_datatype(datatype: str) -> None:
    expected = _sample(datatype, 8).reshape(2, 4)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": [2, 4],
                    "parameters": {"binary_data_size": expected.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    parsed = codec.parse_infer(header + expected.tobytes(), str(len(header)), _signature(datatype))
    np.testing.assert_array_equal(parsed.inputs["x"], expected)
    assert parsed.binary_outputs == {"y", "z"}
    body, header_length = codec.render_infer("m", 1, parsed, {"y": expected})
    assert header_length is not None
    document = orjson.loads(body[:header_length])
    (out,) = document["outputs"]
    assert out["datatype"] == datatype and out["shape"] == [2, 4]
    restored = np.frombuffer(body[header_length:], dtype=DATATYPES[datatype]).reshape(2, 4)
    np.testing.assert_array_equal(restored, expected)


def test_bytes_tensors_both_ways() -> None:
    words = [b"a", b"", "é".encode(), b"long" * 10]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [4],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    parsed = codec.parse_infer(header + raw, str(len(header)), _signature("BYTES", (-1,)))
    assert parsed.inputs["x"].tolist() == words
    json_body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [2, 2],
                    "data": [["a", "b"], ["c", "d"]],
                }
            ]
        }
    )
    parsed = codec.parse_infer(json_body, None, _signature("BYTES", (-1, 2)))
    assert parsed.inputs["x"].tolist() == [["a", "b"], ["c", "d"]]
    body, length = codec.render_infer("m", 1, parsed, {"y": np.array(["x", "é"], dtype=object)})
    assert length is None
    assert orjson.loads(body)["outputs"][0]["data"] == ["x", "é"]


def test_nested_data_and_selected_outputs() -> None:
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "data": [[1, 2, 3, 4], [5, 6, 7, 8]],
                }
            ],
            "outputs": [{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}],
        }
    )
    parsed = codec.parse_infer(body, None, _signature())
    assert parsed.id == "r1"
    assert parsed.output_names == ("z", "y")
    assert parsed.binary_outputs == {"z"}
    np.testing.assert_array_equal(
        parsed.inputs["x"], np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    )


def test_json_output_keeps_fp32_precision_and_nan_does_not_break_encoding() -> None:
    parsed = codec.parse_infer(_request(), None, _signature())
    body, _ = codec.render_infer("m", 3, parsed, {"y": np.array([0.1, np.nan], dtype=np.float32)})
    document = orjson.loads(body)
    assert document["model_version"] == "3"
    assert document["outputs"][0]["data"] == [0.1, None]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"null", "JSON object"),
        (b"[]", "JSON object"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"{" * 100_000, "not valid JSON"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], '
            b'"data": [NaN, 1, 2, 3]}]}',
            "not valid JSON",
        ),
        (orjson.dumps({"inputs": []}), "non-empty"),
        (orjson.dumps({"inputs": [{}], "extra": 1}), "unknown field"),
        (_request(name="y"), "unknown input"),
        (_request(name="x" * 1_000_000), "unknown input"),
        (_request(datatype="FP64"), "expects FP32"),
        (_request(datatype="FLOAT"), "unknown datatype"),
        (_request(shape=[2, 3]), "shape"),
        (_request(shape=[-2, 4]), "ints >= 1"),
        (_request(shape=[0, 4]), "ints >= 1"),
        (_request(shape=[2, 4, 1]), "shape"),
        (_request(shape=[1] * 40), "at most"),
        (_request(shape=[10**12, 4]), "needs 4000000000000"),
        (_request(shape="2,4"), "shape"),
        (_request(data=list(range(7))), "needs 8"),
        (_request(data=["a"] * 8), "strings"),
        (_request(data=[None] * 8), "not FP32"),
        (_request(data=[[1, 2], [3]]), "regular"),
        (_request(data=[1e39] * 8), "out of range"),
        (_request(data=[True] * 8), "not FP32"),
        (_request(data=5), "must be an array"),
        (_request(unknown=1), "unknown field"),
        (
            orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}]}),
            "no 'data'",
        ),
        (orjson.dumps({"id": 5, "inputs": [{}]}), "'id'"),
        (
            orjson.dumps(
                {
                    "inputs": [
                        _
                        for _ in [
                            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                        ]
                        * 2
                    ]
                }
            ),
            "more than once",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                    ],
                    "outputs": [{"name": "nope"}],
                }
            ),
            "unknown output",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                    ],
                    "outputs": [{"name": "y"}, {"name": "y"}],
                }
            ),
            "more than once",
        ),
    ],
)
def test_bad_json_input_is_a_bad_request(body: bytes, fragment: str) -> None:
    # limits far above any case here: an impossible shape is refused by its data count
    # before anything that size is allocated, whatever MLAPI_MAX_ELEMENTS says
    limits = Limits(max_elements=10**15)
    with pytest.raises(BadRequest) as caught:
        codec.parse_infer(body, None, _signature(), limits)
    assert fragment in caught.value.message
    assert len(caught.value.message) < 400  # a 1 MB name is never echoed back whole


def test_integer_range_is_checked() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1, 4], "data": [1, 2, 3, 300]}]}
    )
    with pytest.raises(BadRequest, match="out of range for INT8"):
        codec.parse_infer(body, None, _signature("INT8"))
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1, 4], "data": [1, 2, 3, 4.5]}]}
    )
    with pytest.raises(BadRequest):
        codec.parse_infer(body, None, _signature("INT8"))


@pytest.mark.parametrize(
    ("size", "extra", "header_length", "fragment"),
    [
        (31, b"", None, "needs 32"),
        (32, b"\0" * 8, None, "add up to 32"),
        (40, b"", None, "past the end"),
        (32, b"", "0", "Inference-Header-Content-Length"),
        (32, b"", "abc", "Inference-Header-Content-Length"),
        (32, b"", "999999", "Inference-Header-Content-Length"),
    ],
)
def test_bad_binary_input_is_a_bad_request(
    size: int, extra: bytes, header_length: str | None, fragment: str
) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    data = np.zeros(8, dtype=np.float32).tobytes()[:size] + extra
    with pytest.raises(BadRequest, match=fragment):
        codec.parse_infer(header + data, header_length or str(len(header)), _signature())


def test_malformed_bytes_binary_is_a_bad_request() -> None:
    raw = struct.pack("<I", 100) + b"short"
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    with pytest.raises(BadRequest, match="malformed"):
        codec.parse_infer(header + raw, str(len(header)), _signature("BYTES", (-1,)))


def test_a_json_bytes_element_over_the_limit_is_refused_naming_it() -> None:
    """The JSON decoder's own check of MLAPI_MAX_BYTES_ELEMENT (removing it left
    every test green): a string of 40 characters against a limit of 16 bytes, and
    one of 10 characters that UTF-8 makes 30 bytes."""
    from mlapi.errors import PayloadTooLarge

    limits = Limits(max_bytes_element=16)
    for text in ("a" * 40, "€" * 10):
        body = orjson.dumps(
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        )
        with pytest.raises(PayloadTooLarge, match="MLAPI_MAX_BYTES_ELEMENT"):
            codec.parse_infer(body, None, _signature("BYTES", (-1,)), limits)
    fits = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["€" * 5]}]}
    )
    assert codec.parse_infer(fits, None, _signature("BYTES", (-1,)), limits).inputs["x"].size == 1
