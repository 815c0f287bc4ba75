"""The servers compared: ml-api itself (ONNX, skops, and binary tensors as the
official clients send them) and its peers, each as a command line, an
environment, a request body and a reader of the labels in its answer. Peers run
from their own venvs under bench/.venvs (bench/setup_peers.sh makes them)."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from models import Models

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
MLAPI = Path(sys.executable).parent / "mlapi"

Labels = Callable[[bytes, dict[str, str]], "list[int] | None"]  # body, headers -> labels


def json_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json"}


@dataclass
class Target:
    name: str
    venv: str | None  # a bench/.venvs entry, None for ml-api's own venv
    command: Callable[[Models, str, int], list[str]]
    env: Callable[[Models, str], dict[str, str]]
    path: Callable[[str], str]
    body: Callable[[np.ndarray], bytes]
    labels: Labels
    headers: Callable[[bytes], dict[str, str]] = json_headers
    ready: str = "/health"
    cwd: Callable[[Models, str], Path] | None = None
    notes: str = ""

    def missing(self) -> bool:
        """True when this peer's venv has not been made (bench/setup_peers.sh)."""
        return self.venv is not None and not (VENVS / self.venv / "bin" / "python").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----- request bodies and answers -----------------------------------------------------
def v2_body(dtype: str) -> Callable[[np.ndarray], bytes]:
    def body(rows: np.ndarray) -> bytes:
        data = rows.astype(np.float64).ravel().tolist()
        return json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": list(rows.shape), "datatype": dtype, "data": data}
                ]
            }
        ).encode()

    return body


def binary_body(rows: np.ndarray) -> bytes:
    """What tritonclient sends by default: a JSON header, then the raw FP32 tensor,
    and binary outputs asked for."""
    raw = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + raw


def binary_headers(body: bytes) -> dict[str, str]:
    """A binary_body's headers: the JSON header's length is where the tensor starts."""
    length = json.JSONDecoder().raw_decode(body.decode("latin-1"))[1]
    return {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(length),
    }


def _label_rows(name: str, values: np.ndarray, shape: list[int]) -> list[int] | None:
    if name in ("label", "output_label", "predict"):
        return [int(x) for x in values.ravel()]
    if name in ("probabilities", "output_probability", "predict_proba"):
        return values.reshape(shape).argmax(axis=1).tolist()
    return None


def v2_labels(body: bytes, headers: dict[str, str]) -> list[int] | None:
    cut = headers.get("inference-header-content-length")
    document = json.loads(body[: int(cut)] if cut else body)
    offset = int(cut) if cut else 0
    for output in document.get("outputs", []):
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            dtype = {"INT64": np.int64, "FP32": np.float32}[output["datatype"]]
            values = np.frombuffer(body[offset : offset + size], dtype=dtype)
            offset += size
        else:
            values = np.asarray(output["data"])
        found = _label_rows(output["name"], values, output["shape"])
        if found is not None:
            return found
    return None


def _json_labels(read: Callable[[Any], list[int]]) -> Labels:
    return lambda body, headers: read(json.loads(body))


# ----- ml-api -------------------------------------------------------------------------
def mlapi(repo: str, binary: bool = False) -> Target:
    return Target(
        name=f"ml-api ({repo}{', binary' if binary else ''})",
        venv=None,
        command=lambda m, model, port: [str(MLAPI), "serve", "--port", str(port)],
        env=lambda m, model: {
            "MODEL_PATH": str(m.folder / repo),
            "WORKERS": "1",
            "LOG_LEVEL": "warning",
            # on, as by default, on a port of its own (servers run side by side)
            "API_GRPC_PORT": str(free_port()),
        },
        path=lambda model: f"/v2/models/{model}/infer",
        body=binary_body if binary else v2_body("FP32" if repo == "onnx" else "FP64"),
        labels=v2_labels,
        headers=binary_headers if binary else json_headers,
        notes="tritonclient's default request: raw FP32 in, binary outputs" if binary else "",
    )


# ----- peers --------------------------------------------------------------------------
def _uvicorn(venv: str, module: str) -> Callable[[Models, str, int], list[str]]:
    def command(m: Models, model: str, port: int) -> list[str]:
        return [
            str(VENVS / venv / "bin" / "uvicorn"),
            module,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--app-dir",
            str(HERE / "peers"),
        ]

    return command


def _mlserver(batched: bool) -> Target:
    def cwd(m: Models, model: str) -> Path:
        folder = m.folder / ("mlserver-batched" if batched else "mlserver") / model
        folder.mkdir(parents=True, exist_ok=True)
        settings: dict[str, object] = {
            "name": model,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(m.folder / "joblib" / model / "1" / "model.joblib")},
        }
        if batched:
            settings.update({"max_batch_size": 64, "max_batch_time": 0.002})
        (folder / "model-settings.json").write_text(json.dumps(settings))
        return folder

    def command(m: Models, model: str, port: int) -> list[str]:
        folder = cwd(m, model)
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "parallel_workers": 0,
                    "debug": False,
                }
            )
        )
        return [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(folder)]

    return Target(
        name="MLServer" + (" batched" if batched else ""),
        venv="mlserver",
        command=command,
        env=lambda m, model: {},
        path=lambda model: f"/v2/models/{model}/infer",
        body=v2_body("FP64"),
        labels=v2_labels,
        ready="/v2/health/ready",
        notes="parallel_workers=0 (the default 1 halves throughput and fails with current uvloop)",
    )


def _joblib_env(batched: bool, **extra: str) -> Callable[[Models, str], dict[str, str]]:
    """What the LitServe and BentoML apps in bench/peers read: the joblib model and
    the batch size (0: no batching)."""
    return lambda m, model: {
        "BENCH_MODEL": str(m.folder / "joblib" / model / "1" / "model.joblib"),
        "BENCH_BATCH": "64" if batched else "0",
        **extra,
    }


def _rows_body(rows: np.ndarray) -> bytes:
    """The LitServe and BentoML apps' request: the rows as a nested list."""
    return json.dumps({"input": rows.astype(np.float64).tolist()}).encode()


def _litserve(batched: bool) -> Target:
    return Target(
        name="LitServe" + (" batched" if batched else ""),
        venv="litserve",
        command=lambda m, model, port: [
            str(VENVS / "litserve" / "bin" / "python"),
            str(HERE / "peers" / "litserve_app.py"),
            str(port),
        ],
        env=_joblib_env(batched),
        path=lambda model: "/predict",
        body=_rows_body,
        labels=_json_labels(lambda response: [int(x) for x in response["label"]]),
    )


def _bentoml(batched: bool) -> Target:
    return Target(
        name="BentoML" + (" batched" if batched else ""),
        venv="bentoml",
        command=lambda m, model, port: [
            str(VENVS / "bentoml" / "bin" / "bentoml"),
            "serve",
            "bentoml_service:Model",
            "--port",
            str(port),
        ],
        env=_joblib_env(batched, BENTOML_DO_NOT_TRACK="true"),
        path=lambda model: "/predict",
        body=_rows_body,
        labels=_json_labels(lambda response: np.asarray(response).argmax(axis=1).tolist()),
        ready="/readyz",
        cwd=lambda m, model: HERE / "peers",
        notes="returns probabilities only (less work than the others)",
    )


BARE = "bare Starlette+ORT"
FASTAPI = "FastAPI+sklearn"
OURS = "ml-api (onnx)"
OURS_BINARY = "ml-api (onnx, binary)"

TARGETS = [
    mlapi("onnx"),
    mlapi("onnx", binary=True),
    mlapi("skops"),
    Target(
        BARE,
        "fastapi",
        _uvicorn("fastapi", "bare_app:app"),
        env=lambda m, model: {"BENCH_MODEL": str(m.folder / "onnx" / model / "1" / "model.onnx")},
        path=lambda model: f"/v2/models/{model}/infer",
        body=v2_body("FP32"),
        labels=v2_labels,
        notes="no validation, auth, metrics or batching",
    ),
    Target(
        FASTAPI,
        "fastapi",
        _uvicorn("fastapi", "fastapi_app:app"),
        env=lambda m, model: {
            "BENCH_MODEL": str(m.folder / "joblib" / model / "1" / "model.joblib")
        },
        path=lambda model: f"/v2/models/{model}/infer",
        body=v2_body("FP64"),
        labels=v2_labels,
    ),
    _mlserver(False),
    _mlserver(True),
    _litserve(False),
    _litserve(True),
    _bentoml(False),
    _bentoml(True),
]
