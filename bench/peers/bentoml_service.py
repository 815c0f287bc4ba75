"""BentoML serving a scikit-learn model. Run: bentoml serve bentoml_service:Model
--port PORT (BENCH_MODEL=model.joblib, BENCH_BATCH=0 or the max batch size)."""

import os

import bentoml
import joblib
import numpy as np

BATCH = int(os.environ.get("BENCH_BATCH", "0"))


@bentoml.service(workers=1)
class Model:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL"])

    if BATCH:

        @bentoml.api(batchable=True, max_batch_size=BATCH, max_latency_ms=1000)
        def predict(self, input: np.ndarray) -> np.ndarray:
            return self.model.predict_proba(input)
    else:

        @bentoml.api
        def predict(self, input: np.ndarray) -> np.ndarray:
            return self.model.predict_proba(input)
