"""XGBoost and LightGBM: served natively (the library's own predict, what
runtimes/trees.py does) or through ONNX (onnxmltools' conversion run by onnxruntime)?
Both timed on one thread at 1 and 64 rows, and checked against the library's
predict_proba on every row of the data set.

    .venv/bin/python -m pip install onnxmltools   # the converter, for this script only
    .venv/bin/python bench/trees.py

Writes bench/results/trees.md."""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def timed_ms(call: Any, seconds: float = 1.5) -> float:
    for _ in range(20):
        call()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def onnx_session(model: Any, library: str, n_features: int) -> Any:
    import onnxruntime as ort
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("input", FloatTensorType([None, n_features]))]
    convert = convert_xgboost if library == "xgboost" else convert_lightgbm
    onnx_model = convert(model, initial_types=types, target_opset=15)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model.SerializeToString(), options)


def main() -> int:
    import lightgbm
    import xgboost
    from sklearn.datasets import load_breast_cancer

    from mlapi.repository.config import ModelConfig
    from mlapi.runtimes.base import LoadContext
    from mlapi.runtimes.trees import LightGBMRuntime, XGBoostRuntime

    data = load_breast_cancer()
    rows, target = data.data.astype(np.float64), data.target
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    lines = [
        "| model (breast cancer, 200 trees, one thread) | native 1 row | ONNX 1 row "
        "| native 64 rows | ONNX 64 rows | native max diff | ONNX max diff | ONNX labels off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for library in ("xgboost", "lightgbm"):
        if library == "xgboost":
            model = xgboost.XGBClassifier(n_estimators=200, max_depth=6, n_jobs=1)
            model.fit(rows, target)
            path = out / "trees-model.json"
            model.save_model(str(path))
            runtime: Any = XGBoostRuntime
        else:
            model = lightgbm.LGBMClassifier(n_estimators=200, num_leaves=31, n_jobs=1, verbose=-1)
            model.fit(rows, target)
            path = out / "trees-model.txt"
            model.booster_.save_model(str(path))
            runtime = LightGBMRuntime
        served = runtime(LoadContext(out, path, ModelConfig(), False, 1))
        session = onnx_session(model, library, rows.shape[1])
        expected = model.predict_proba(rows)
        native = served.predict({"input": rows}, ["probabilities"])["probabilities"]
        onnx_out = session.run(None, {"input": rows.astype(np.float32)})
        onnx_probs = (
            np.array([[p[k] for k in sorted(p)] for p in onnx_out[1]])
            if isinstance(onnx_out[1], list)
            else np.asarray(onnx_out[1])
        )
        onnx_off = int((onnx_probs.argmax(1) != expected.argmax(1)).sum())
        cells = []
        for size in (1, 64):
            batch = rows[:size]
            batch32 = batch.astype(np.float32)
            outputs = ["label", "probabilities"]
            cells.append(timed_ms(partial(served.predict, {"input": batch}, outputs)))
            cells.append(timed_ms(partial(session.run, None, {"input": batch32})))
        lines.append(
            f"| {library} | {cells[0]:.3f} ms | {cells[1]:.3f} ms | {cells[2]:.3f} ms | "
            f"{cells[3]:.3f} ms | {np.abs(native - expected).max():.1e} | "
            f"{np.abs(onnx_probs - expected).max():.1e} | {onnx_off} of {len(rows)} |"
        )
        path.unlink()
    text = "\n".join(lines)
    print(text)
    (out / "trees.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
