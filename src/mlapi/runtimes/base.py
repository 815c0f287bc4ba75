"""The runtime protocol and what a runtime is given to load a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mlapi.repository.config import ModelConfig
from mlapi.tensors import Signature


@dataclass(frozen=True)
class LoadContext:
    """Everything a runtime may use to load one model version."""

    model_dir: Path  # the version folder
    model_file: Path
    config: ModelConfig
    allow_pickle: bool
    intra_op_threads: int  # 0: the runtime's own default
    cache_dir: Path | None = None  # where a runtime may keep derived artefacts
    device: str = "auto"  # auto | cpu | cuda

    def relative(self, path: Path) -> str:
        """A path as shown to clients: relative to the version folder, never absolute."""
        try:
            return str(path.relative_to(self.model_dir))
        except ValueError:
            return path.name


class Runtime(Protocol):
    """A loaded model. ``predict`` may be called from one worker thread at a time."""

    platform: str
    signature: Signature

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the model; return exactly the named outputs."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Interruptible(Protocol):
    """A runtime whose running ``predict`` can be stopped from another thread (the
    batcher calls it when every request of the running batch has been given up:
    its deadline passed or its client left). The stopped ``predict`` raises;
    ``interrupt`` says whether a run was there to stop."""

    def interrupt(self) -> bool: ...


RuntimeFactory = Callable[[LoadContext], Runtime]
