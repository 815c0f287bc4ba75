"""ml-api against its peers, side by side, on this machine.

    make bench            # or: .venv/bin/python bench/run.py [--quick] [--only mlapi,bare]

Every server is pinned to core 0 (`taskset`), wrk drives it from core 1 at 1, 16 and
64 connections with 1-row and 8-row V2-style JSON bodies, after a warm-up. Before
any timing, each server's answers are checked against in-process predictions. The
models: a logistic regression and a 100-tree random forest on 32 features, made
here from a synthetic data set. Peers run from their own venvs under bench/.venvs
(bench/setup_peers.sh makes them); a peer whose venv is missing is reported and
skipped. Writes bench/results/results.json, results.md and chart.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
RESULTS = HERE / "results"
MLAPI = Path(sys.executable).parent / "mlapi"
N_FEATURES = 32


# ----- models -------------------------------------------------------------------------
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


# ----- targets ------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    venv: str | None  # a bench/.venvs entry, None for ml-api's own venv
    command: Callable[[Models, str, int], list[str]]
    env: Callable[[Models, str], dict[str, str]]
    path: Callable[[str], str]
    body: Callable[[np.ndarray], bytes]
    labels: Callable[[Any], list[int] | None]  # labels from a decoded response body
    ready: str = "/health"
    cwd: Callable[[Models, str], Path] | None = None
    notes: str = ""


def _v2_body(dtype: str) -> Callable[[np.ndarray], bytes]:
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


def _v2_labels(response: Any) -> list[int] | None:
    for output in response.get("outputs", []):
        if output["name"] in ("label", "output_label", "predict"):
            return [int(x) for x in output["data"]]
        if output["name"] in ("probabilities", "output_probability", "predict_proba"):
            shape = output["shape"]
            return np.asarray(output["data"]).reshape(shape).argmax(axis=1).tolist()
    return None


def _mlapi(repo: str) -> Target:
    return Target(
        name=f"ml-api ({repo})",
        venv=None,
        command=lambda m, model, port: [str(MLAPI), "serve", "--port", str(port)],
        env=lambda m, model: {
            "MODEL_PATH": str(m.folder / repo),
            "WORKERS": "1",
            "LOG_LEVEL": "warning",
        },
        path=lambda model: f"/v2/models/{model}/infer",
        body=_v2_body("FP32" if repo == "onnx" else "FP64"),
        labels=_v2_labels,
    )


def _uvicorn(venv: str, module: str, suffix: str) -> Callable[[Models, str, int], list[str]]:
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
        settings = {
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
                    "grpc_port": _free_port(),
                    "metrics_port": _free_port(),
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
        body=_v2_body("FP64"),
        labels=_v2_labels,
        ready="/v2/health/ready",
        notes="parallel_workers=0 (the default 1 halves throughput and fails with current uvloop)",
    )


def _litserve(batched: bool) -> Target:
    return Target(
        name="LitServe" + (" batched" if batched else ""),
        venv="litserve",
        command=lambda m, model, port: [
            str(VENVS / "litserve" / "bin" / "python"),
            str(HERE / "peers" / "litserve_app.py"),
            str(port),
        ],
        env=lambda m, model: {
            "BENCH_MODEL": str(m.folder / "joblib" / model / "1" / "model.joblib"),
            "BENCH_BATCH": "64" if batched else "0",
        },
        path=lambda model: "/predict",
        body=lambda rows: json.dumps({"input": rows.astype(np.float64).tolist()}).encode(),
        labels=lambda response: [int(x) for x in response["label"]],
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
        env=lambda m, model: {
            "BENCH_MODEL": str(m.folder / "joblib" / model / "1" / "model.joblib"),
            "BENCH_BATCH": "64" if batched else "0",
            "BENTOML_DO_NOT_TRACK": "true",
        },
        path=lambda model: "/predict",
        body=lambda rows: json.dumps({"input": rows.astype(np.float64).tolist()}).encode(),
        labels=lambda response: np.asarray(response).argmax(axis=1).tolist(),
        ready="/readyz",
        cwd=lambda m, model: HERE / "peers",
        notes="returns probabilities only (less work than the others)",
    )


TARGETS = [
    _mlapi("onnx"),
    _mlapi("skops"),
    Target(
        "bare Starlette+ORT",
        "fastapi",
        _uvicorn("fastapi", "bare_app:app", ""),
        env=lambda m, model: {"BENCH_MODEL": str(m.folder / "onnx" / model / "1" / "model.onnx")},
        path=lambda model: f"/v2/models/{model}/infer",
        body=_v2_body("FP32"),
        labels=_v2_labels,
        notes="no validation, auth, metrics or batching",
    ),
    Target(
        "FastAPI+sklearn",
        "fastapi",
        _uvicorn("fastapi", "fastapi_app:app", ""),
        env=lambda m, model: {
            "BENCH_MODEL": str(m.folder / "joblib" / model / "1" / "model.joblib")
        },
        path=lambda model: f"/v2/models/{model}/infer",
        body=_v2_body("FP64"),
        labels=_v2_labels,
    ),
    _mlserver(False),
    _mlserver(True),
    _litserve(False),
    _litserve(True),
    _bentoml(False),
    _bentoml(True),
]


# ----- running ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout_s: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, AttributeError):
            continue
    return total / 1024


@dataclass
class Run:
    target: str
    model: str
    rows: int
    connections: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class ServerReport:
    target: str
    model: str
    cold_start_s: float | None = None
    rss_mb: float | None = None
    problem: str | None = None
    runs: list[Run] = field(default_factory=list)


class Server:
    def __init__(self, target: Target, models: Models, model: str, cores: str = "0") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            **target.env(models, model),
        }
        cwd = target.cwd(models, model) if target.cwd else models.folder
        self.log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115 - lives as long as the server
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            ["taskset", "-c", cores, *target.command(models, model, self.port)],
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited {self.process.returncode}: " + self.tail())
            if _get(self.url + path) == 200:
                return time.monotonic() - self.started
            time.sleep(0.02)
        raise RuntimeError("not ready in time: " + self.tail())

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-600:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        Path(self.log.name).unlink(missing_ok=True)


def _check_answers(server: Server, target: Target, models: Models, model: str) -> None:
    rng = np.random.default_rng(3)
    reference = models.reference[model]
    for rows in (1, 8, 1, 8, 3):
        x = models.features[rng.integers(0, len(models.features), rows)]
        got = target.labels(_post(server.url + target.path(model), target.body(x)))
        want = reference.predict(x.astype(np.float64)).tolist()
        agree = sum(int(a == b) for a, b in zip(got or [], want, strict=False))
        if got is None or len(got) != rows or agree < rows:
            # float32 ONNX vs float64 sklearn may differ on a knife-edge row; allow none here
            raise RuntimeError(f"wrong answer: got {got}, expected {want}")


def _wrk(
    url: str, body: bytes, connections: int, seconds: float, cores: str = "1"
) -> tuple[float, float, float, int]:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115 - closed below, removed in finally
    script.write(
        textwrap.dedent(f"""
        wrk.method = "POST"
        wrk.body = {json.dumps(body.decode())}
        wrk.headers["Content-Type"] = "application/json"
    """)
    )
    script.close()
    try:
        output = subprocess.run(
            [
                "taskset",
                "-c",
                cores,
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, output)
        errors += int(found.group(1)) if found else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", output)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return rps, latency("50%"), latency("99%"), errors


def bench_target(
    target: Target, models: Models, model: str, args: argparse.Namespace
) -> ServerReport:
    report = ServerReport(target.name, model)
    if target.venv and not (VENVS / target.venv / "bin" / "python").exists():
        report.problem = f"venv bench/.venvs/{target.venv} missing (bench/setup_peers.sh)"
        return report
    server = Server(target, models, model)
    try:
        report.cold_start_s = server.wait_ready(target.ready)
        _check_answers(server, target, models, model)
        rng = np.random.default_rng(5)
        for rows in args.rows:
            x = models.features[rng.integers(0, len(models.features), rows)]
            url, body = server.url + target.path(model), target.body(x)
            _wrk(url, body, 64, args.warmup_s)
            for connections in args.connections:
                rps, p50, p99, errors = _wrk(url, body, connections, args.seconds)
                report.runs.append(
                    Run(target.name, model, rows, connections, rps, rps * rows, p50, p99, errors)
                )
                print(
                    f"  {target.name:22} {model:7} rows={rows} c={connections:<3} "
                    f"{rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}",
                    flush=True,
                )
        report.rss_mb = _rss_mb(server.process.pid)
    except Exception as exc:  # a peer that fails is reported, not fatal
        report.problem = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"  {target.name:22} {model:7} FAILED: {report.problem}", flush=True)
    finally:
        server.stop()
    return report


# ----- the in-process limit, image size ---------------------------------------------
def in_process_limits(models: Models, seconds: float = 2.0) -> dict[str, float]:
    import onnxruntime as ort
    import orjson

    limits: dict[str, float] = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for model in ("logreg", "forest"):
        session = ort.InferenceSession(
            str(models.folder / "onnx" / model / "1" / "model.onnx"),
            options,
            providers=["CPUExecutionProvider"],
        )
        names = [o.name for o in session.get_outputs()]
        for rows in (1, 64):
            x = np.ascontiguousarray(models.features[:rows])
            count, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                session.run(names, {"input": x})
                count += 1
            limits[f"{model} rows/s, batch {rows}"] = count * rows / seconds
        body = _v2_body("FP32")(models.features[:1])
        count, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            tensor = orjson.loads(body)["inputs"][0]
            x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            outputs = session.run(names, {"input": x})
            orjson.dumps(
                {"outputs": [o.ravel() for o in outputs]}, option=orjson.OPT_SERIALIZE_NUMPY
            )
            count += 1
        limits[f"{model} decode+predict+encode/s, 1 row"] = count / seconds
    return limits


def image_size_mb() -> tuple[str, float] | None:
    """The production image's size, if one was built here (compose or the e2e tier)."""
    if not shutil.which("docker"):
        return None
    for image in ("ml-api:latest", "ml-api:e2e"):
        result = subprocess.run(
            ["docker", "image", "inspect", image, "--format", "{{.Size}}"],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            return image, int(result.stdout) / 1e6
    return None


# ----- report -------------------------------------------------------------------------
def write_report(
    reports: list[ServerReport],
    limits: dict[str, float],
    image: tuple[str, float] | None,
    args: argparse.Namespace,
) -> str:
    lines = [
        "| server | model | rows | conns | req/s | rows/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for run in report.runs:
            lines.append(
                f"| {run.target} | {run.model} | {run.rows} | {run.connections} | "
                f"{run.requests_per_s:,.0f} | {run.rows_per_s:,.0f} | {run.p50_ms:.2f} | "
                f"{run.p99_ms:.2f} | {run.errors} |"
            )
    lines += [
        "",
        "| server | model | cold start to ready (s) | RSS after load (MB) | note |",
        "|---|---|---|---|---|",
    ]
    notes = {t.name: t.notes for t in TARGETS}
    for report in reports:
        cold = f"{report.cold_start_s:.2f}" if report.cold_start_s else "-"
        rss = f"{report.rss_mb:.0f}" if report.rss_mb else "-"
        lines.append(
            f"| {report.target} | {report.model} | {cold} | {rss} | "
            f"{report.problem or notes.get(report.target, '')} |"
        )
    lines += [
        "",
        "Ratios (ml-api (onnx) throughput / peer's, same model, rows, connections):",
        "",
        "| peer | model | rows | conns | ratio |",
        "|---|---|---|---|---|",
    ]
    ours = {
        (r.model, r.rows, r.connections): r
        for rep in reports
        for r in rep.runs
        if r.target == "ml-api (onnx)"
    }
    for report in reports:
        for run in report.runs:
            mine = ours.get((run.model, run.rows, run.connections))
            if mine and run.target != "ml-api (onnx)" and run.requests_per_s:
                lines.append(
                    f"| {run.target} | {run.model} | {run.rows} | {run.connections} | "
                    f"{mine.requests_per_s / run.requests_per_s:.2f}x |"
                )
    lines += ["", "In-process limit on one core (onnxruntime, 1 thread):", ""]
    lines += [f"- {name}: {value:,.0f}" for name, value in limits.items()]
    lines += [
        "",
        "Production image: "
        + (
            f"{image[0]} {image[1]:.0f} MB (on the base image it was built from)"
            if image
            else "not built here"
        ),
        "",
        f"Settings: {args.seconds}s per run after a {args.warmup_s}s warm-up; "
        f"server on core 0, wrk on core 1; {time.strftime('%Y-%m-%d %H:%M')}",
    ]
    return "\n".join(lines)


def chart(reports: list[ServerReport], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install matplotlib)")
        return
    runs = [r for rep in reports for r in rep.runs if r.connections == 64]
    panels = sorted({(r.model, r.rows) for r in runs})
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for axis, (model, rows) in zip(axes[0], panels, strict=True):
        subset = sorted(
            (r for r in runs if (r.model, r.rows) == (model, rows)), key=lambda r: r.rows_per_s
        )
        axis.barh(
            [r.target for r in subset],
            [r.rows_per_s for r in subset],
            color=["tab:green" if r.target.startswith("ml-api") else "tab:gray" for r in subset],
        )
        axis.set_title(f"{model}, {rows}-row requests, 64 connections")
        axis.set_xlabel("rows/s on one core")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def workers_study(models: Models, seconds: float) -> list[str]:
    """WORKERS=1 vs 2 with both cores given to the server and to wrk alike (they
    compete: the numbers compare the two settings, not absolute capacity)."""
    lines = [
        "",
        "Workers on 2 cores (server and wrk share cores 0-1; logreg, 64 connections):",
        "",
        "| WORKERS | rows | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for workers in ("1", "2"):
        target = _mlapi("onnx")
        base_env = target.env
        target.env = lambda m, model, base_env=base_env, w=workers: {
            **base_env(m, model),
            "WORKERS": w,
        }
        server = Server(target, models, "logreg", cores="0,1")
        try:
            server.wait_ready(target.ready)
            for rows in (1, 8):
                x = models.features[:rows]
                url, body = server.url + target.path("logreg"), target.body(x)
                _wrk(url, body, 64, 2, cores="0,1")
                rps, p50, p99, errors = _wrk(url, body, 64, seconds, cores="0,1")
                lines.append(
                    f"| {workers} | {rows} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} |"
                )
                print(
                    f"  WORKERS={workers} rows={rows} {rps:9.0f} req/s p99 {p99:.2f} ms", flush=True
                )
        finally:
            server.stop()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="ml-api against its peers")
    parser.add_argument("--quick", action="store_true", help="64 connections, 1 and 8 rows, 4 s")
    parser.add_argument("--only", help="comma-separated name prefixes, e.g. ml-api,bare")
    parser.add_argument("--models", default="logreg,forest")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument(
        "--workers-study", action="store_true", help="also compare WORKERS=1 and 2 on both cores"
    )
    args = parser.parse_args()
    args.connections = [64] if args.quick else [1, 16, 64]
    args.rows = [1, 8]
    if args.quick:
        args.seconds = min(args.seconds, 4.0)
    if not shutil.which("wrk") or not shutil.which("taskset"):
        sys.exit("bench: needs wrk and taskset (apt-get install wrk util-linux)")
    RESULTS.mkdir(exist_ok=True)
    targets = [
        t
        for t in TARGETS
        if not args.only or any(t.name.startswith(p) for p in args.only.split(","))
    ]
    with tempfile.TemporaryDirectory(prefix="mlapi-bench-") as folder:
        models = make_models(Path(folder))
        reports = []
        for model in args.models.split(","):
            for target in targets:
                reports.append(bench_target(target, models, model, args))
        limits = in_process_limits(models)
        study = workers_study(models, args.seconds) if args.workers_study else []
    image = image_size_mb()
    text = write_report(reports, limits, image, args) + "\n".join(study)
    (RESULTS / "results.md").write_text(text + "\n")
    (RESULTS / "results.json").write_text(
        json.dumps(
            {"reports": [asdict(r) for r in reports], "limits": limits, "image": image},
            indent=2,
        )
    )
    chart(reports, RESULTS / "chart.png")
    print(text)


if __name__ == "__main__":
    main()
