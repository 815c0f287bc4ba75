"""LitServe serving a scikit-learn model. Run: python litserve_app.py PORT
(BENCH_MODEL=model.joblib, BENCH_BATCH=0 or the max batch size)."""

import os
import sys
from itertools import pairwise

import joblib
import litserve as ls
import numpy as np


class Api(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device):
        self.model = joblib.load(os.environ["BENCH_MODEL"])

    def decode_request(self, request):
        return np.asarray(request["input"], dtype=np.float64)

    def batch(self, inputs):
        return np.concatenate(inputs), [len(rows) for rows in inputs]

    def predict(self, x):
        if isinstance(x, tuple):  # a batch: (stacked rows, rows per request)
            rows, sizes = x
            return self.model.predict(rows), self.model.predict_proba(rows), sizes
        return self.model.predict(x), self.model.predict_proba(x)

    def unbatch(self, output):
        labels, probabilities, sizes = output
        bounds = np.cumsum([0, *sizes])
        return [(labels[a:b], probabilities[a:b]) for a, b in pairwise(bounds)]

    def encode_response(self, output):
        labels, probabilities = output
        return {"label": labels.tolist(), "probabilities": probabilities.tolist()}


if __name__ == "__main__":
    batch = int(os.environ.get("BENCH_BATCH", "0"))
    options = {"max_batch_size": batch, "batch_timeout": 0.002} if batch else {}
    server = ls.LitServer(Api(**options), accelerator="cpu", workers_per_device=1)
    server.run(port=int(sys.argv[1]), generate_client_file=False)
