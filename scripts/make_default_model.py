"""Make the default model that ships with ml-api: a logistic regression on the
iris data set (bundled with scikit-learn, no download), exported to ONNX with a
string label output and a class-probability output. Deterministic: the same
library versions give the same bytes.

    python scripts/make_default_model.py [--out src/mlapi/default_models]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUT = Path(__file__).resolve().parents[1] / "src" / "mlapi" / "default_models"

MODEL_TOML = """\
# The default model: iris species from 4 measurements (cm): sepal length,
# sepal width, petal length, petal width. Made by scripts/make_default_model.py.
platform = "onnxruntime_onnx"
labels = {labels}

[warmup]
inputs = {{ input = [[5.1, 3.5, 1.4, 0.2]] }}
"""


def build(out: Path) -> Path:
    iris = load_iris()
    features = iris.data.astype(np.float32)
    labels = np.asarray(iris.target_names)[iris.target]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(features, labels)
    n_classes = len(iris.target_names)
    onnx_model = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, features.shape[1]]))],
        final_types=[
            ("label", StringTensorType([None])),
            ("probabilities", FloatTensorType([None, n_classes])),
        ],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    onnx_model.producer_version = ""  # keep the bytes independent of the exporter's patch level
    version_dir = out / "iris" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    names = "[" + ", ".join(f'"{name}"' for name in iris.target_names) + "]"
    (version_dir / "model.toml").write_text(MODEL_TOML.format(labels=names))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    path = build(args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
