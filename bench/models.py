"""The benchmark's two models, made here from a synthetic data set: a logistic
regression and a 100-tree random forest on 32 features, each as ONNX (ml-api,
the bare handler), skops (ml-api's scikit-learn runtime) and joblib (the peers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 32


@dataclass
class Models:
    folder: Path
    features: np.ndarray
    reference: dict[str, Any]  # model -> fitted sklearn estimator


def make_models(folder: Path) -> Models:
    import joblib
    import skops.io as sio
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    features, target = make_classification(
        n_samples=4000, n_features=N_FEATURES, n_informative=12, n_classes=3, random_state=0
    )
    features = features.astype(np.float32)
    fitted = {
        "logreg": LogisticRegression(max_iter=1000).fit(features, target),
        "forest": RandomForestClassifier(
            n_estimators=100, max_depth=12, random_state=0, n_jobs=1
        ).fit(features, target),
    }
    for name, model in fitted.items():
        onnx_model = to_onnx(
            model,
            initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
            options={id(model): {"zipmap": False}},
            target_opset=17,
        )
        for kind in ("onnx", "skops", "joblib"):
            (folder / kind / name / "1").mkdir(parents=True, exist_ok=True)
        (folder / "onnx" / name / "1" / "model.onnx").write_bytes(onnx_model.SerializeToString())
        sio.dump(model, folder / "skops" / name / "1" / "model.skops")
        untrusted = sio.get_untrusted_types(file=folder / "skops" / name / "1" / "model.skops")
        if untrusted:  # a forest's Tree type: trusted explicitly, as a user would
            listed = ", ".join(f'"{t}"' for t in untrusted)
            (folder / "skops" / name / "1" / "model.toml").write_text(
                f"trusted_types = [{listed}]\n"
            )
        joblib.dump(model, folder / "joblib" / name / "1" / "model.joblib")
    return Models(folder, features, fitted)
