"""The floor of what a Python model server costs: Starlette + orjson +
onnxruntime, no validation, no auth, no metrics, no batching. Same V2 request
and response bodies as ml-api. Run: uvicorn bare_app:app (BENCH_MODEL=model.onnx)."""

import os

import numpy as np
import onnxruntime as ort
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
)
names = [o.name for o in session.get_outputs()]


async def infer(request):
    body = orjson.loads(await request.body())
    tensor = body["inputs"][0]
    rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    label, probabilities = session.run(names, {tensor["name"]: rows})
    outputs = [
        {"name": "label", "datatype": "INT64", "shape": list(label.shape), "data": label},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": list(probabilities.shape),
            "data": probabilities.ravel(),
        },
    ]
    return Response(
        orjson.dumps({"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )


async def health(request):
    return Response(b"ok")


app = Starlette(
    routes=[Route("/v2/models/{m}/infer", infer, methods=["POST"]), Route("/health", health)]
)
