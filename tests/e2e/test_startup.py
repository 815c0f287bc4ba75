"""Start to healthy on the real engine: `docker compose up -d` (images built) until
the container's readiness health check passes with the default model. Docker
20.10 has no start_interval, so the check's interval decides; a cheap check
(`mlapi healthcheck` imports no settings stack) makes a short interval affordable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import skops.io as sio

from tests.e2e.conftest import Stack, docker, make_stack
from tests.fixtures.models import fresh_classifier

pytestmark = pytest.mark.e2e


def test_up_to_healthy_in_seconds(stack_factory: list[Stack], tmp_path: Path) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml"])
    stack_factory.append(stack)
    stack.compose("build", "ml-api")
    started = time.monotonic()
    stack.compose("up", "-d", "ml-api")
    (container,) = stack.containers("ml-api")
    healthy_after = None
    while time.monotonic() - started < 60:
        (state,) = json.loads(docker("inspect", str(container["Id"])).stdout)
        if state["State"].get("Health", {}).get("Status") == "healthy":
            healthy_after = time.monotonic() - started
            break
        time.sleep(0.1)
    assert healthy_after is not None, "not healthy within 60 s"
    print(f"docker compose up -d -> healthy: {healthy_after:.1f} s")
    assert healthy_after < 8  # the target is 5 s; with 10 s checks it was at least 10
    # and the check itself stays cheap inside the container: no settings stack
    probe = (
        "import sys; from mlapi.cli import main; code = main(['healthcheck']); "
        "print(code, 'pydantic' in sys.modules)"
    )
    out = docker("exec", str(container["Id"]), "python", "-c", probe).stdout.split()
    assert out == ["0", "False"], out


def test_the_default_image_is_onnx_only_and_names_the_variant_for_skops(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    """The default production image carries no scikit-learn (issue 15: added layers
    <= 140 MB, gRPC front included; the e2e build measures them on the debootstrap
    base), serves the default model (so onnxruntime works without the C-API library
    the Dockerfile drops), and refuses a skops model with a reason that names the
    variant."""
    stack = make_stack(tmp_path, ["docker-compose.yml"])
    stack_factory.append(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", "ml-api")
    (container,) = stack.containers("ml-api")
    cid = str(container["Id"])
    image = str(container["Image"])
    base = stack.env["PYTHON_IMAGE"]
    added = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) - int(
        docker("image", "inspect", "-f", "{{.Size}}", base).stdout
    )
    print(f"default production image: {added / 1e6:.1f} MB above the base")
    assert added < 140e6, f"{added / 1e6:.1f} MB above the base (target 140)"
    missing = docker("exec", cid, "python", "-c", "import sklearn", check=False)
    assert missing.returncode != 0 and "No module named 'sklearn'" in missing.stderr
    # a skops model published into the running container is refused, naming the variant
    model = tmp_path / "model.skops"
    sio.dump(fresh_classifier(4), model)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(model, arcname="model.skops")
    files = [arg for name in stack.files for arg in ("-f", name)]
    published = subprocess.run(
        [
            "docker",
            "compose",
            "-p",
            stack.project,
            *files,
            "exec",
            "-T",
            "ml-api",
            "mlapi",
            "models",
            "publish",
            "-",
            "--name",
            "tabular",
            "--version",
            "1",
        ],
        input=archive.getvalue(),
        capture_output=True,
        timeout=120,
        env={**os.environ, **stack.env},
        cwd=stack.folder,
    )
    assert published.returncode == 0, published.stderr
    load = httpx.post(stack.url + "/v2/repository/models/tabular/load", timeout=30)
    assert load.status_code == 400
    assert "MLAPI_EXTRAS=sklearn" in load.json()["error"], load.text
    assert httpx.post(
        stack.url + "/v2/models/iris/infer",
        json={
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
            ]
        },
        timeout=10,
    ).json()["outputs"][0]["data"] == ["setosa"]
