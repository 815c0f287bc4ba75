"""A hand-written FastAPI + pydantic + scikit-learn V2 service, the way most
teams write one. Run: uvicorn fastapi_app:app (BENCH_MODEL=model.joblib)."""

import os
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["BENCH_MODEL"])
app = FastAPI()


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    inputs: list[Tensor]


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest):
    tensor = request.inputs[0]
    rows = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
    labels = model.predict(rows)
    probabilities = model.predict_proba(rows)
    return {
        "model_name": name,
        "outputs": [
            {
                "name": "label",
                "datatype": "INT64",
                "shape": list(labels.shape),
                "data": labels.tolist(),
            },
            {
                "name": "probabilities",
                "datatype": "FP64",
                "shape": list(probabilities.shape),
                "data": probabilities.ravel().tolist(),
            },
        ],
    }


@app.get("/health")
def health():
    return {"ok": True}
