"""How long a model update takes and what it costs in memory (not a test).

For the bundled iris model and bench/models.py's 100-tree forest: `mlapi serve` (one
worker, MLAPI_REPOSITORY_POLL_S=0.2) serves version 1 under steady traffic;
`mlapi models publish` adds version 2; we time publish -> the first answer from
version 2 and -> every answer from version 2, and read the worker's resident memory
before, its peak (VmHWM) during the swap, and after the old version is unloaded
(bake_s = 1). Median of --repeats runs.

    .venv/bin/python bench/swap.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import N_FEATURES, make_models
from targets import MLAPI

from mlapi.settings import DEFAULT_MODEL_PATH


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(pid: int, field: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def _version(url: str, body: bytes) -> str:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(orjson.loads(response.read())["model_version"])


def one_swap(source: Path, name: str, body: bytes, work: Path) -> dict[str, float]:
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / name).mkdir(parents=True)
    shutil.copytree(source, repo / name / "1")
    port = _port()
    env = {
        "MODEL_PATH": str(repo),
        "MLAPI_REPOSITORY_POLL_S": "0.2",
        "API_GRPC_PORT": str(_port()),
        "PATH": "/usr/bin:/bin",
    }
    server = subprocess.Popen(
        [MLAPI, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _version(url, body) == "1":
                    break
            except OSError:
                time.sleep(0.05)
        answers: list[tuple[float, str]] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                answers.append((time.monotonic(), _version(url, body)))
                time.sleep(0.005)

        thread = threading.Thread(target=traffic)
        thread.start()
        time.sleep(0.5)
        rss_before = _status(server.pid, "VmRSS")
        staged = work / "v2"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source, staged)
        (staged / "model.toml").write_text("[rollout]\nbake_s = 1\n")
        started = time.monotonic()
        subprocess.run(
            [MLAPI, "models", "publish", str(staged), "--model-path", str(repo), "--name", name],
            check=True,
            capture_output=True,
        )
        while not any(v == "2" for _, v in answers[-1:]):
            time.sleep(0.005)
        first = next(t for t, v in answers if v == "2" and t >= started) - started
        time.sleep(2.5)  # the bake (1 s) ends and version 1 is unloaded
        stop.set()
        thread.join()
        after = [v for t, v in answers if t >= started + first]
        peak = _status(server.pid, "VmHWM")
        rss_after = _status(server.pid, "VmRSS")
        assert set(after) == {"2"}, set(after)
        return {
            "swap_s": first,
            "rss_before_mb": rss_before,
            "peak_mb": peak,
            "rss_after_mb": rss_after,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = make_models(work / "models")
        iris = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 4],
                        "data": [5.1, 3.5, 1.4, 0.2],
                    }
                ]
            }
        )
        forest = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, N_FEATURES],
                        "data": np.asarray(models.features[0]).tolist(),
                    }
                ]
            }
        )
        onnx = work / "models" / "onnx"
        cases = [
            (
                "iris (bundled, logistic regression)",
                DEFAULT_MODEL_PATH / "iris" / "1",
                "iris",
                iris,
            ),
            ("forest (100 trees, 32 features)", onnx / "forest" / "1", "forest", forest),
        ]
        print("| model | publish -> serving, s (median) | RSS before | peak | RSS after | runs |")
        print("|---|---|---|---|---|---|")
        for label, source, name, body in cases:
            runs = [one_swap(source, name, body, work) for _ in range(args.repeats)]
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            print(
                f"| {label} | {median['swap_s']:.3f} | {median['rss_before_mb']:.0f} MB | "
                f"{median['peak_mb']:.0f} MB | {median['rss_after_mb']:.0f} MB | {len(runs)} |"
            )


if __name__ == "__main__":
    main()
