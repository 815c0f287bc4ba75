"""LitServe serving a scikit-learn model. Run: python litserve_app.py PORT
(BENCH_MODEL=model.joblib, BENCH_BATCH=0 or the max batch size)."""

import os
import sys

import joblib
import litserve as ls
import numpy as np


class Api(ls.LitAPI):
    def setup(self, device):
        self.model = joblib.load(os.environ["BENCH_MODEL"])

    def decode_request(self, request):
        return np.asarray(request["input"], dtype=np.float64)

    def batch(self, inputs):
        return np.concatenate(inputs)

    def predict(self, x):
        return self.model.predict(x), self.model.predict_proba(x)

    def unbatch(self, output):
        labels, probabilities = output
        return [(labels[i : i + 1], probabilities[i : i + 1]) for i in range(len(labels))]

    def encode_response(self, output):
        labels, probabilities = output
        return {"label": labels.tolist(), "probabilities": probabilities.tolist()}


if __name__ == "__main__":
    batch = int(os.environ.get("BENCH_BATCH", "0"))
    options = {"max_batch_size": batch, "batch_timeout": 0.002} if batch else {}
    server = ls.LitServer(Api(**options), accelerator="cpu", workers_per_device=1)
    server.run(port=int(sys.argv[1]), generate_client_file=False)
