"""Coverage-guided fuzz targets (atheris, libFuzzer's engine for Python) for the
parsers that read what a client or a publisher sends: the V2 binary tensor framing,
the V2 JSON codec, the gRPC ModelInferRequest decoder and the tar publish reader.
Each target may refuse its input only with ml-api's own errors (a 4xx, or a
ConfigError for publish); any other exception, a hang or a crash is a finding.

    .venv/bin/python fuzz/targets.py binary -max_total_time=60 fuzz/corpus/binary

`make fuzz` runs each for FUZZ_S seconds (60 in CI) on its committed seed corpus."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris
import orjson

with atheris.instrument_imports():
    from mlapi.api import codec as json_codec
    from mlapi.errors import ConfigError, MlapiError
    from mlapi.repository import publish
    from mlapi.rpc import codec as grpc_codec
    from mlapi.rpc import messages
    from mlapi.serving.limits import Limits
    from mlapi.tensors import Signature, TensorSpec

LIMITS = Limits(max_elements=4096, max_bytes_element=4096, max_tokens=4096)
SIGNATURES = [
    Signature(
        inputs=(TensorSpec("input", "FP32", (-1, 4)),),
        outputs=(TensorSpec("label", "BYTES", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))),
    ),
    Signature(
        inputs=(TensorSpec("text", "BYTES", (-1,)), TensorSpec("n", "INT64", (-1, 2))),
        outputs=(TensorSpec("y", "FP64", (-1,)),),
    ),
    Signature(inputs=(), outputs=(), dynamic=True),
]


def _signature(data: bytes) -> Signature:
    return SIGNATURES[data[0] % len(SIGNATURES)] if data else SIGNATURES[0]


def binary(data: bytes) -> None:
    """A V2 body whose first bytes say where the JSON header ends."""
    if len(data) < 3:
        return
    cut = str(int.from_bytes(data[1:3], "little") % (len(data) + 2))
    try:
        json_codec.parse_infer(data[3:], cut, _signature(data), LIMITS)
    except MlapiError as exc:
        assert exc.status < 500, exc


DATATYPES = ["FP32", "FP64", "INT64", "INT8", "UINT64", "BOOL", "BYTES", "FP16", "nope"]
NAMES = ["input", "text", "n", "y", "label", "", "x" * 70]


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    """A JSON value of the kinds a V2 request carries, nested at most 3 deep."""
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 3 else 4)
    if kind == 0:
        return fdp.ConsumeInt(8)
    if kind == 1:
        return fdp.ConsumeRegularFloat()
    if kind == 2:
        return fdp.ConsumeUnicodeNoSurrogates(8)
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return None
    if kind == 5:
        return {fdp.PickValueInList(NAMES): _value(fdp, depth + 1)}
    return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 6))]


def _document(fdp: atheris.FuzzedDataProvider) -> dict[str, object]:
    """A V2 request that is nearly right: real keys, shapes and datatypes, each part
    liable to be wrong, so the fuzzer reaches the checks behind the JSON parser."""
    inputs = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        item: dict[str, object] = {
            "name": fdp.PickValueInList(NAMES),
            "datatype": fdp.PickValueInList(DATATYPES),
            "shape": [fdp.ConsumeIntInRange(-2, 6) for _ in range(fdp.ConsumeIntInRange(0, 3))],
            "data": _value(fdp),
        }
        if fdp.ConsumeBool():
            item["parameters"] = {"binary_data_size": fdp.ConsumeIntInRange(-1, 64)}
        inputs.append(item)
    document: dict[str, object] = {"inputs": inputs}
    if fdp.ConsumeBool():
        document["outputs"] = [{"name": fdp.PickValueInList(NAMES)} for _ in range(3)]
    if fdp.ConsumeBool():
        document["parameters"] = {"binary_data_output": fdp.ConsumeBool()}
    return document


def json(data: bytes) -> None:
    """Raw bytes half the time; else a structured, nearly right request."""
    if data[:1] == b"{":
        body = data
    else:
        fdp = atheris.FuzzedDataProvider(data[1:])
        body = orjson.dumps(_document(fdp), option=orjson.OPT_NON_STR_KEYS)
    try:
        parsed = json_codec.parse_infer(body, None, _signature(data), LIMITS)
    except MlapiError as exc:
        assert exc.status < 500, exc
        return
    assert all(array.size <= LIMITS.max_elements for array in parsed.inputs.values())


def grpc(data: bytes) -> None:
    try:
        request = grpc_codec.parse_message(data[1:], messages.ModelInferRequest)
        grpc_codec.parse_infer(request, _signature(data), LIMITS)
    except MlapiError as exc:
        assert exc.status < 500, exc


_REPOSITORY = Path(tempfile.mkdtemp(prefix="mlapi-fuzz-publish-"))


def tar(data: bytes) -> None:
    """A tar stream as `mlapi models publish -` reads it: refused with a
    ConfigError, or published whole; either way nothing half-written is left."""
    budget = publish.Budget(max_bytes=1 << 20, max_files=64)
    try:
        final = publish.publish(_REPOSITORY, "m", None, archive=io.BytesIO(data), budget=budget)
    except ConfigError:
        left = list(_REPOSITORY.iterdir())
        assert left == [] or [p.name for p in left] == ["m"], left
        hidden = [p for p in (_REPOSITORY / "m").glob(".publish-*")] if left else []
        assert hidden == [], hidden
        return
    assert final.is_dir() and (final / "manifest.json").is_file()
    shutil.rmtree(_REPOSITORY / "m")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "binary": binary,
    "json": json,
    "grpc": grpc,
    "tar": tar,
}


def main() -> None:
    name = sys.argv.pop(1)
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
