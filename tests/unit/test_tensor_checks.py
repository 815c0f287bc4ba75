"""The checks every front's tensors get (serving/codec.py), called as the fronts
call them, each refusal with its exact words: they are what a client reads, the
same over JSON, binary and gRPC."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from mlapi.errors import BadRequest, PayloadTooLarge
from mlapi.serving import codec
from mlapi.serving.limits import MAX_DIMS, Limits
from mlapi.tensors import Signature, TensorSpec

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)), TensorSpec("t", "BYTES", (-1,))),
    outputs=(TensorSpec("y", "FP32", (-1,)), TensorSpec("label", "BYTES", (-1,))),
)
DYNAMIC = Signature(inputs=(), outputs=(), dynamic=True)
LIMITS = Limits(max_elements=100, max_bytes_element=10)
NAME = "n" * 80  # a client's long name: shown cut to 64 characters and '...'
SHOWN = "n" * 64 + "..."


def test_parameters_are_an_object_or_absent() -> None:
    assert codec.parameters_of({}, "input 'x'") == {}
    assert codec.parameters_of({"parameters": {"a": 1}}, "input 'x'") == {"a": 1}
    with pytest.raises(BadRequest) as refused:
        codec.parameters_of({"parameters": [1]}, "input 'x'")
    assert refused.value.message == "'parameters' of input 'x' must be an object"


def test_counts_are_checked_before_any_entry_is_read() -> None:
    codec.check_inputs_count(2, SIGNATURE)
    codec.check_inputs_count(10**6, DYNAMIC)
    with pytest.raises(BadRequest) as refused:
        codec.check_inputs_count(3, SIGNATURE)
    assert refused.value.message == (
        "the request has 3 inputs, more than the model's 2: an input is unknown or given "
        "more than once"
    )
    codec.check_outputs_count(2, SIGNATURE)
    codec.check_outputs_count(codec.MAX_ANY_OUTPUTS, DYNAMIC)
    with pytest.raises(BadRequest) as refused:
        codec.check_outputs_count(3, SIGNATURE)
    assert refused.value.message == (
        "the request asks for 3 outputs, more than the model's 2: an output is unknown or "
        "requested more than once"
    )
    with pytest.raises(BadRequest, match="more than the model's 256: "):
        codec.check_outputs_count(codec.MAX_ANY_OUTPUTS + 1, DYNAMIC)


def test_every_declared_input_must_be_given() -> None:
    given = {"x": np.zeros((1, 4)), "t": np.zeros(1)}
    codec.check_all_given(given, SIGNATURE)
    codec.check_all_given({}, DYNAMIC)
    with pytest.raises(BadRequest) as refused:
        codec.check_all_given({"t": given["t"]}, SIGNATURE)
    assert refused.value.message == "missing input(s) ['x']"


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "message"),
    [
        ("", "FP32", [1, 4], "inputs[3].name must be a non-empty string"),
        (7, "FP32", [1, 4], "inputs[3].name must be a non-empty string"),
        (NAME, "FP32", [1, 4], f"unknown input '{SHOWN}' (the model takes ['x', 't'])"),
        ("x", "FP99" + NAME, [1, 4], f"input 'x': unknown datatype 'FP99{SHOWN[:60]}...'"),
        ("x", 5, [1, 4], "input 'x': unknown datatype '5'"),
        ("x", "FP64", [1, 4], "input 'x' has datatype FP64, the model expects FP32"),
        ("x", "FP32", "1,4", "input 'x': 'shape' must be an array of at most 16 ints"),
        ("x", "FP32", [1] * 17, "input 'x': 'shape' must be an array of at most 16 ints"),
        ("x", "FP32", [1, 0], "input 'x': shape [1, 0] must hold ints >= 1"),
        ("x", "FP32", [1, True], "input 'x': shape [1, True] must hold ints >= 1"),
        ("x", "FP32", [1, 4.0], "input 'x': shape [1, 4.0] must hold ints >= 1"),
        (
            "x",
            "FP32",
            [1, 5],
            "input 'x' has shape [1, 5], the model expects [-1, 4] (-1: any size)",
        ),
    ],
)
def test_an_input_is_refused_naming_what_is_wrong(
    name: Any, datatype: Any, shape: Any, message: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        codec.check_input(3, name, datatype, shape, SIGNATURE, 0, LIMITS)
    assert refused.value.message == message


def test_a_dynamic_model_takes_any_name_and_shape_of_up_to_16_dimensions() -> None:
    checked = codec.check_input(0, NAME, "INT8", [1] * MAX_DIMS, DYNAMIC, 0, LIMITS)
    assert checked == codec.CheckedInput(NAME, "INT8", (1,) * MAX_DIMS, 1, 1)
    with pytest.raises(BadRequest, match=rf"input '{SHOWN}': shape \[0\] must hold"):
        codec.check_input(0, NAME, "INT8", [0], DYNAMIC, 0, LIMITS)


def test_elements_add_up_over_the_request_up_to_the_limit_inclusive() -> None:
    first = codec.check_input(0, "x", "FP32", [20, 4], SIGNATURE, 0, LIMITS)
    assert (first.size, first.elements) == (80, 80)
    second = codec.check_input(1, "t", "BYTES", [20], SIGNATURE, first.elements, LIMITS)
    assert (second.size, second.elements) == (20, 100)
    with pytest.raises(PayloadTooLarge) as refused:
        codec.check_input(1, "t", "BYTES", [21], SIGNATURE, first.elements, LIMITS)
    assert refused.value.message == (
        "input 't' brings the request to 101 elements, over the limit of 100 (MLAPI_MAX_ELEMENTS)"
    )


def _items(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_binary_numbers_and_bytes_read_to_their_shape() -> None:
    data = np.arange(8, dtype="<f4")
    got = codec.array_from_binary("x", "FP32", (2, 4), 8, data.tobytes(), LIMITS)
    np.testing.assert_array_equal(got, data.reshape(2, 4))
    words = codec.array_from_binary("t", "BYTES", (2, 1), 2, _items(b"ab", b""), LIMITS)
    assert words.shape == (2, 1) and words.ravel().tolist() == [b"ab", b""]
    edge = codec.array_from_binary("t", "BYTES", (1,), 1, _items(b"x" * 10), LIMITS)
    assert edge.tolist() == [b"x" * 10]  # exactly the element limit


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (_items(b"ab") + b"\x01\x00\x00", 2, "input '{n}': malformed BYTES binary data"),
        (_items(b"ab", b"cd"), 1, "input '{n}': malformed BYTES binary data"),
        (struct.pack("<I", 5) + b"abcd", 1, "input '{n}': malformed BYTES binary data"),
        (_items(b"ab"), 2, "input '{n}' has 1 values but shape [2] needs 2"),
        (b"", 1, "input '{n}' has 0 values but shape [2] needs 1"),
    ],
)
def test_malformed_bytes_binary_is_refused(data: bytes, count: int, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        codec.array_from_binary(NAME, "BYTES", (2,), count, data, LIMITS)
    assert refused.value.message == message.format(n=SHOWN)


def test_bytes_binary_whose_items_end_exactly_at_the_end_is_whole() -> None:
    data = _items(b"abc", b"")  # the last length prefix ends the data
    assert len(data) == 11
    got = codec.array_from_binary("t", "BYTES", (2,), 2, data, LIMITS)
    assert got.tolist() == [b"abc", b""]


def test_binary_that_does_not_fit_its_shape_or_the_element_limit_is_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        codec.array_from_binary(NAME, "FP32", (2, 4), 8, b"\x00" * 31, LIMITS)
    assert refused.value.message == (
        f"input '{SHOWN}': binary_data_size is 31 bytes, shape [2, 4] of FP32 needs 32"
    )
    with pytest.raises(PayloadTooLarge) as too_big:
        codec.array_from_binary(NAME, "BYTES", (1,), 1, _items(b"x" * 11), LIMITS)
    assert too_big.value.message == (
        f"input '{SHOWN}' has a BYTES element of 11 bytes, over the limit of 10 "
        "(MLAPI_MAX_BYTES_ELEMENT)"
    )


def test_requested_outputs_default_to_all_and_follow_binary_data() -> None:
    assert codec.requested_outputs(None, SIGNATURE, False) == (("y", "label"), frozenset())
    assert codec.requested_outputs(None, SIGNATURE, True) == (
        ("y", "label"),
        frozenset({"y", "label"}),
    )
    asked = [{"name": "label"}, {"name": "y", "parameters": {"binary_data": True}}]
    assert codec.requested_outputs(asked, SIGNATURE, False) == (("label", "y"), frozenset({"y"}))
    off = [{"name": "y", "parameters": {"binary_data": False}}]
    assert codec.requested_outputs(off, SIGNATURE, True) == (("y",), frozenset())
    assert codec.requested_outputs([{"name": NAME}], DYNAMIC, False) == ((NAME,), frozenset())


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"name": "y"}, "'outputs' must be an array"),
        (["y"], "outputs[0] must be an object with 'name' and optional 'parameters'"),
        (
            [{"name": "y", "extra": 1}],
            "outputs[0] must be an object with 'name' and optional 'parameters'",
        ),
        ([{"name": "y"}, {"name": 5}], "outputs[1].name must be a string"),
        ([{"name": NAME}], f"unknown output '{SHOWN}' (the model gives ['label', 'y'])"),
        ([{"name": "y"}, {"name": "y"}], "output 'y' is requested more than once"),
        ([{"name": "y", "parameters": 3}], "'parameters' of output 'y' must be an object"),
        (
            [{"name": "label", "parameters": {"classification": 2}}],
            "the classification extension is not supported",
        ),
    ],
)
def test_a_bad_outputs_list_is_refused_naming_what_is_wrong(items: Any, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        codec.requested_outputs(items, SIGNATURE, False)
    assert refused.value.message == message


def test_a_model_that_declares_outputs_and_is_dynamic_still_names_its_outputs() -> None:
    both = Signature(inputs=(), outputs=(TensorSpec("y", "FP32", (-1,)),), dynamic=True)
    with pytest.raises(BadRequest, match=r"unknown output 'z' \(the model gives \['y'\]\)"):
        codec.requested_outputs([{"name": "z"}], both, False)
    with pytest.raises(BadRequest) as refused:
        codec.requested_outputs([{"name": "y"}, {"name": "y"}], DYNAMIC, False)
    assert refused.value.message == "output 'y' is requested more than once"
