"""On-demand models in the production deployment (issue 24): docker-compose.yml +
docker-compose.prod.yml + docker-compose.host-models.yml, two replicas behind
nginx, each container limited to 1 GiB (one worker each: a worker's share then holds
about four of these models, where two workers' halves would hold one each, which
`mlapi doctor` warns of), every model on demand, 48
ONNX models whose files alone total 3.5 GiB (about twice that loaded). Bounded
traffic from eight clients, most of it on a few models: every answer is a 200 and
right, the caches load and evict, no container is OOM-killed or restarted."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

from tests.e2e.conftest import Stack, docker, make_stack, write_api_key
from tests.fixtures.models import wide_label, write_wide_logreg

pytestmark = pytest.mark.e2e
FILES = ["docker-compose.yml", "docker-compose.prod.yml", "docker-compose.host-models.yml"]
MODELS, FILE_MB, FEATURES = 48, 70, 16


def test_more_models_than_memory_in_the_production_deployment(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    host_models = tmp_path / "host-models"
    paths = {
        f"m{i:02d}": write_wide_logreg(host_models, f"m{i:02d}", FILE_MB, features=FEATURES, seed=i)
        for i in range(MODELS)
    }
    on_disk = sum(path.stat().st_size for path in paths.values())
    assert on_disk > 3 * (1 << 30)
    for path in [host_models, *host_models.rglob("*")]:  # read by the image's user
        path.chmod(0o755 if path.is_dir() else 0o644)
    row = np.random.default_rng(1).standard_normal(FEATURES).astype(np.float32)
    expected = {f"m{i:02d}": wide_label(row, FEATURES, seed=i) for i in range(MODELS)}

    stack = make_stack(tmp_path, FILES)
    stack_factory.append(stack)
    stack.env.update(
        {
            "ML_MODELS_HOST_PATH": str(host_models),
            "ML_API_MEMORY": "1g",
            "MLAPI_MODEL_LOADING": "on_demand",
            "MLAPI_MIN_RESIDENT_S": "1",
            "WORKERS": "1",
        }
    )
    key = write_api_key(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240")
    replicas = stack.containers("ml-api")
    assert len(replicas) == 2
    assert all(c["HostConfig"]["Memory"] == 1 << 30 for c in replicas)

    # eight clients for 30 s (bounded: at most 2,000 requests), three models in four
    # requests among the first four, the rest spread over all 48
    answers: list[tuple[str, int, object]] = []
    lock = threading.Lock()
    stop = time.monotonic() + 30
    body = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, FEATURES], "data": row.tolist()}
        ]
    }

    def client(seed: int) -> None:
        pick = random.Random(seed)
        with httpx.Client(base_url=stack.url, headers={"X-API-Key": key}, timeout=60) as http:
            while time.monotonic() < stop and len(answers) < 2000:
                hot = pick.random() < 0.75
                name = f"m{pick.randrange(4) if hot else pick.randrange(MODELS):02d}"
                try:
                    answer = http.post(f"/v2/models/{name}/infer", json=body)
                    parsed = _said(answer)
                    label = parsed["outputs"][0]["data"][0] if answer.is_success else parsed
                    outcome = (name, answer.status_code, label)
                except httpx.TransportError as exc:
                    outcome = (name, 0, type(exc).__name__)
                with lock:
                    answers.append(outcome)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    statuses = {status for _, status, _ in answers}
    if statuses != {200}:  # what the servers said of the refusals, in the failure
        logs = stack.compose("logs", "--no-color", "ml-api").stdout
        said = [line[-400:] for line in logs.splitlines() if "not loaded now" in line][-5:]
        counts = {s: sum(1 for a in answers if a[1] == s) for s in statuses}
        refused = [(name, status, body) for name, status, body in answers if status != 200][:3]
        states = [_state(str(c["Id"])) for c in replicas]  # an OOM kill, a restart
        bad = [
            line[-300:]
            for line in logs.splitlines()
            if '"level":"error"' in line or "Traceback" in line or "Killed" in line
        ][-5:]
        raise AssertionError(f"{counts}: {refused}: {said}: {states}: {bad}")
    assert all(label == expected[name] for name, _, label in answers)
    assert len({name for name, _, _ in answers}) > 24  # the traffic reached most models

    metrics = httpx.get(f"{stack.url}/metrics", headers={"X-API-Key": key}, timeout=10).text
    loads = _total(metrics, "mlapi_model_loads_total")
    evictions = _total(metrics, "mlapi_model_evictions_total")
    print(f"{len(answers)} requests, all 200; {loads:.0f} loads, {evictions:.0f} evictions")
    assert loads > 8 and evictions > 0  # one scrape sees one replica's workers
    for container in replicas:
        state = _state(str(container["Id"]))
        assert state["oom_killed"] is False
        assert state["restarts"] == 0
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200


def _state(container: str) -> dict[str, object]:
    """What says a container was OOM-killed or restarted."""
    (found,) = json.loads(docker("inspect", container).stdout)
    state = found["State"]
    return {"restarts": found["RestartCount"], "oom_killed": state["OOMKilled"]} | {
        key: state[key] for key in ("Status", "ExitCode", "StartedAt")
    }


def _said(answer: httpx.Response) -> Any:
    """The answer's JSON; a proxy's page (not JSON) as its first 200 characters."""
    try:
        return answer.json()
    except ValueError:
        return answer.text[:200]


def _total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )
