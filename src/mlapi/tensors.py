"""Tensor datatypes of the Open Inference Protocol and their numpy twins, and the
signature a model declares (names, datatypes, shapes with -1 for "any")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# V2 datatype name -> numpy dtype (little-endian, as the binary extension sends).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("O"),
}

_BY_NUMPY: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items() if name != "BYTES"
}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array (strings and objects are BYTES)."""
    kind = array.dtype.kind
    if kind in "OUS":
        return "BYTES"
    try:
        return _BY_NUMPY[(kind, array.dtype.itemsize)]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no V2 datatype") from None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model. ``shape`` uses -1 for a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape, strict=True):
            if want != -1 and want != got:
                return False
        return True

    @property
    def has_batch_dim(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model takes and gives. ``dynamic`` means the runtime accepts any named
    inputs (a Python model with no declared signature): then only datatypes and
    shapes sent by the client are used."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic: bool = False

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)
