"""gRPC beside HTTP: the same ml-api server answering the same model over both
fronts, and MLServer's gRPC on the same model, each pinned to core 0.

    .venv/bin/python bench/grpc_vs_http.py [--models logreg,forest] [--rows 1,8] [--seconds 4]

HTTP is driven by wrk with tritonclient's default request (raw FP32 in, binary
outputs); gRPC by h2load (`apt-get install nghttp2-client`), which sends the same
ModelInferRequest (raw contents, as tritonclient.grpc does) as HTTP/2 gRPC frames
over 16 connections x 4 streams (64 calls at once, like wrk's 64 connections).
h2load cannot read gRPC trailers, so every server's answers are first checked with
tritonclient.grpc against in-process predictions. Rounds alternate between the
three; medians of requests/s and of the server's CPU time per request (what a
request costs, which neighbours on a shared machine change far less than the
rate). MLServer runs with its defaults (parallel_workers=0, as bench/run.py).
Writes bench/results/grpc.md."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from load import Server, cpu_s, wrk
from models import Models, make_models
from targets import VENVS, Target, binary_body, binary_headers, free_port, mlapi, v2_labels

HERE = Path(__file__).resolve().parent
INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(model: str, rows: np.ndarray, dtype: str) -> bytes:
    """A ModelInferRequest with raw contents, serialized, as tritonclient builds it."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype=dtype, shape=list(rows.shape))
    numpy_type = np.float32 if dtype == "FP32" else np.float64
    request.raw_input_contents.append(np.ascontiguousarray(rows, numpy_type).tobytes())
    return bytes(request.SerializeToString())


def h2load(port: int, message: bytes, seconds: float, pid: int) -> tuple[float, float, int]:
    """(calls/s, server CPU us a call, failed) for ``seconds`` of unary calls."""
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as body:
        body.write(frame)
    cpu_before = cpu_s(pid)
    output = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "h2load",
            "-c16",
            "-m4",
            f"-D{max(1, round(seconds))}",
            "-d",
            body.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{port}{INFER}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    cpu_used = cpu_s(pid) - cpu_before
    Path(body.name).unlink()
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", output).group(1))  # type: ignore[union-attr]
    ok = int(re.search(r"status codes: (\d+) 2xx", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    return rate, 1e6 * cpu_used / max(done, 1), done - ok


def check_grpc(port: int, model: str, rows: np.ndarray, dtype: str, expected: list[int]) -> None:
    """The server's labels over gRPC agree with the in-process prediction."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        tensor = triton.InferInput("input", list(rows.shape), dtype)
        tensor.set_data_from_numpy(rows.astype(np.float32 if dtype == "FP32" else np.float64))
        result = client.infer(model, [tensor])
        answer = result.get_response(as_json=True)
        names = [o["name"] for o in answer["outputs"]]
        if "probabilities" in names:
            got = result.as_numpy("probabilities").argmax(axis=1).tolist()
        else:
            got = [int(x) for x in result.as_numpy(names[0]).ravel()]
        if got != expected:
            raise RuntimeError(f"gRPC answers {got}, expected {expected}")
    finally:
        client.close()


def mlserver_grpc(grpc_port: int) -> Target:
    def command(m: Models, model: str, port: int) -> list[str]:
        folder = m.folder / "mlserver-grpc" / model
        folder.mkdir(parents=True, exist_ok=True)
        uri = str(m.folder / "joblib" / model / "1" / "model.joblib")
        settings = {
            "name": model,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": uri},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
        server = {
            "http_port": port,
            "grpc_port": grpc_port,
            "metrics_port": free_port(),
            "parallel_workers": 0,
            "debug": False,
        }
        (folder / "settings.json").write_text(json.dumps(server))
        return [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(folder)]

    return Target(
        name="MLServer gRPC",
        venv="mlserver",
        command=command,
        env=lambda m, model: {},
        path=lambda model: "",
        body=binary_body,
        labels=v2_labels,
        ready="/v2/health/ready",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="gRPC and HTTP side by side")
    parser.add_argument("--models", default="logreg,forest")
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines = [
        "# gRPC and HTTP, one core each (bench/grpc_vs_http.py)",
        "",
        f"{args.rounds} alternating rounds of {args.seconds:g} s, 64 calls in flight; medians.",
        "",
        "| model | rows | ml-api HTTP binary | ml-api gRPC | MLServer gRPC | gRPC / HTTP "
        "(per CPU s) | ml-api / MLServer gRPC (per CPU s) |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as folder:
        models = make_models(Path(folder))
        for model in args.models.split(","):
            for rows in [int(r) for r in args.rows.split(",")]:
                lines.append(row(models, model, rows, args))
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "grpc.md").write_text(text)
    print(text)
    return 0


def row(models: Models, model: str, rows: int, args: argparse.Namespace) -> str:
    x = models.features[np.random.default_rng(5).integers(0, len(models.features), rows)]
    expected = models.reference[model].predict(x).tolist()
    ours_grpc = free_port()
    ours_target = mlapi("onnx", binary=True)
    base_env = ours_target.env
    ours_target.env = lambda m, name: {**base_env(m, name), "API_GRPC_PORT": str(ours_grpc)}
    theirs_grpc = free_port()
    ours = Server(ours_target, models, model)
    theirs = Server(mlserver_grpc(theirs_grpc), models, model)
    try:
        ours.wait_ready("/health")
        theirs.wait_ready("/v2/health/ready")
        check_grpc(ours_grpc, model, x, "FP32", expected)
        check_grpc(theirs_grpc, model, x, "FP64", expected)
        body = binary_body(x)
        http = (ours.url + f"/v2/models/{model}/infer", body, binary_headers(body))
        ours_message = grpc_request(model, x, "FP32")
        theirs_message = grpc_request(model, x, "FP64")
        wrk(*http, 64, 2)
        h2load(ours_grpc, ours_message, 2, ours.process.pid)
        h2load(theirs_grpc, theirs_message, 2, theirs.process.pid)
        results: dict[str, list[tuple[float, float]]] = {"http": [], "grpc": [], "mlserver": []}
        for _ in range(args.rounds):
            load = wrk(*http, 64, args.seconds, pid=ours.process.pid)
            if load.errors:
                raise RuntimeError(f"HTTP: {load.errors} failed")
            results["http"].append((load.requests_per_s, load.cpu_us or 0.0))
            for key, port, message, server in (
                ("grpc", ours_grpc, ours_message, ours),
                ("mlserver", theirs_grpc, theirs_message, theirs),
            ):
                rate, cpu_us, failed = h2load(port, message, args.seconds, server.process.pid)
                if failed:
                    raise RuntimeError(f"{key}: {failed} calls failed")
                results[key].append((rate, cpu_us))
            time.sleep(0.5)
    finally:
        ours.stop()
        theirs.stop()
    rates = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
    cost = {k: statistics.median(c for _, c in v) for k, v in results.items()}

    def shown(key: str) -> str:
        return f"{rates[key]:,.0f}/s ({cost[key]:.0f} us CPU)"

    return (
        f"| {model} | {rows} | {shown('http')} | {shown('grpc')} | {shown('mlserver')} | "
        f"{cost['http'] / cost['grpc']:.2f}x | {cost['mlserver'] / cost['grpc']:.2f}x |"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
