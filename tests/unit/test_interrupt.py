"""onnxruntime's run in progress stopped from another thread (runtimes/onnx.py's
RunSwitch), as the batcher does when every request of the running batch is given
up: the run raises instead of computing the rest of the graph."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from mlapi.repository.config import ModelConfig
from mlapi.runtimes.base import Interruptible, LoadContext
from mlapi.runtimes.onnx import OnnxRuntime
from tests.fixtures.models import write_chain_onnx

SIDE = 400


def _runtime(tmp_path: Path) -> OnnxRuntime:
    path = write_chain_onnx(tmp_path, "chain", SIDE, nodes=400)  # seconds of work in all
    return OnnxRuntime(LoadContext(path.parent, path, ModelConfig(), False, 1))


def test_an_interrupted_run_raises_and_the_next_one_runs_whole(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    assert isinstance(runtime, Interruptible)
    assert runtime.interrupt() is False  # nothing runs: nothing to stop
    x = np.ones((SIDE, SIDE), dtype=np.float32)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(runtime.predict({"x": x}, ["y"]))
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while not runtime.interrupt() and time.monotonic() < deadline:  # once it runs
        time.sleep(0.001)
    worker.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Exception), outcome
    assert "terminate" in str(outcome[0]).lower()
    # fresh run options each run: the stop does not outlive the run it stopped
    small = np.ones((1, SIDE), dtype=np.float32)
    np.testing.assert_array_equal(runtime.predict({"x": small}, ["y"])["y"], small)
    runtime.close()
