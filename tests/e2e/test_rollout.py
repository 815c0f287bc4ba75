"""Issues 9 and 23 on the production compose deployment: two replicas behind nginx,
steady traffic through the one address, and model versions published into the models
volume with the README's one command (no rebuild, no restart): a good one takes over
on both replicas, a corrupt one and one that does not match its manifest are refused
on both, a shadow rollout of a wrong model is refused on both and one of a right
model promoted on both, and no client sees anything but a 200 (nor ever an answer of
the wrong model)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.e2e.conftest import Stack, docker, make_stack, wait_until, write_api_key
from tests.fixtures.archives import tar_of

pytestmark = pytest.mark.e2e
PROD = ["docker-compose.yml", "docker-compose.prod.yml"]
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}
# Version 2 answers differently from the bundled ONNX version 1.
V2_MODEL = """
import numpy as np

class Relabelled:
    def predict(self, inputs):
        rows = inputs["input"].shape[0]
        return {
            "label": np.array(["setosa-v2"] * rows, dtype=object),
            "probabilities": np.full((rows, 3), 1 / 3, dtype=np.float32),
        }
"""
# A shadow that decides within seconds at ~30 requests a second per worker.
SHADOW_GATE = "bake_s = 2\nmin_compared = 50\nmax_shadow_s = 120"
V2_TOML = """
[rollout]
bake_s = 2

[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 4]

[[outputs]]
name = "label"
datatype = "BYTES"
shape = [-1]

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 3]
"""


def _exec_stdin(stack: Stack, data: bytes, *command: str) -> subprocess.CompletedProcess[bytes]:
    """`docker compose ... exec -T ml-api COMMAND` with ``data`` on its stdin."""
    return stack.compose_input(data, "exec", "-T", "ml-api", *command)


def _publish(stack: Stack, files: bytes, version: str, *options: str) -> None:
    """The README's command: a tar of the version folder to `mlapi models publish -`."""
    publish = ("mlapi", "models", "publish", "-", "--name", "iris", "--version", version)
    result = _exec_stdin(stack, files, *publish, *options)
    assert result.returncode == 0, result.stderr


def _replica_index(container_id: str) -> list[dict[str, Any]]:
    """The repository index of one replica, read from inside it (the API key is in
    the container's secret file)."""
    script = (
        "import urllib.request as u; key = open('/run/secrets/api_key').read().strip(); "
        "r = u.Request('http://127.0.0.1:8000/v2/repository/index', data=b'{}', "
        "headers={'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'}); "
        "print(u.urlopen(r).read().decode())"
    )
    return json.loads(docker("exec", container_id, "python", "-c", script).stdout)


@contextmanager
def _traffic(stack: Stack, key: str) -> Iterator[list[tuple[int, str]]]:
    """Eight clients, each about 15 requests a second (~120/s in all), until the
    block ends; at most 300 s. Each answer: (status, model_version)."""
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def send() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=10) as client:
            deadline = time.monotonic() + 300
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post("/v2/models/iris/infer", json=IRIS)
                    version = (
                        response.json().get("model_version", "") if response.is_success else ""
                    )
                    answers.append((response.status_code, str(version)))
                except httpx.TransportError as exc:
                    answers.append((0, type(exc).__name__))
                time.sleep(1 / 15)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def test_publishing_versions_into_the_production_deployment(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, PROD)
    stack.env["MLAPI_REPOSITORY_POLL_S"] = "1"
    stack_factory.append(stack)
    key = write_api_key(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240")
    replicas = [str(c["Id"]) for c in stack.containers("ml-api")]
    assert len(replicas) == 2
    restarts_before = {
        cid: json.loads(docker("inspect", cid).stdout)[0]["RestartCount"] for cid in replicas
    }

    def served(version: str) -> bool:
        return all(
            [
                i["version"]
                for i in _replica_index(cid)
                if i["state"] == "READY"
                and not any(i.get(k) for k in ("candidate", "previous", "trial"))
            ]
            == [version]
            for cid in replicas
        )

    def refused(version: str, words: str) -> bool:
        for cid in replicas:
            items = [i for i in _replica_index(cid) if i.get("version") == version]
            state = items[0]["state"] if items else None
            if state not in ("FAILED", "ROLLED_BACK", "REFUSED") or words not in str(
                items[0]["reason"]
            ):
                return False
        return True

    with _traffic(stack, key) as answers:
        wait_until(lambda: len(answers) > 100, 30, "traffic")
        # version 2: the README's command, a tar of the folder on stdin
        started = time.monotonic()
        v2 = tar_of({"model.py": V2_MODEL.encode(), "model.toml": V2_TOML.encode()})
        _publish(stack, v2, "2")
        wait_until(lambda: served("2"), 30, "version 2 alone on both replicas")
        swap_s = time.monotonic() - started
        count = len(answers)
        wait_until(lambda: len(answers) > count + 100, 30, "traffic after the switch")
        assert {version for _, version in answers[-80:]} == {"2"}
        # version 3: a corrupt model file, published the same way
        onnx = (DEFAULT_MODEL_PATH / "iris" / "1" / "model.onnx").read_bytes()
        corrupt = tar_of({"model.onnx": onnx[:300]})
        _publish(stack, corrupt, "3")
        wait_until(lambda: refused("3", "model.onnx"), 30, "version 3 refused on both")
        # version 4: copied by other means, with a manifest its file does not match
        manifest = json.dumps({"format": 1, "files": {"model.onnx": "0" * 64}}).encode()
        # the manifest first: a copy in progress fails its check until it is whole
        mismatched = tar_of({"manifest.json": manifest, "model.onnx": onnx})
        extract = (
            "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|')"
            ".extractall('/app/models/iris/4')"
        )
        result = _exec_stdin(stack, mismatched, "python", "-c", extract)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: refused("4", "does not match"), 30, "version 4 refused on both")
        # version 5: needs more memory than the 1 GiB containers have left
        big = tar_of(
            {"model.py": V2_MODEL.encode(), "model.toml": b"memory_mb = 4000\n" + V2_TOML.encode()}
        )
        _publish(stack, big, "5")
        # each read of the index is answered by one of a replica's two workers, and each
        # worker looks at the folder on its own: wait for the words, not for one look
        wait_until(lambda: refused("5", "needs about"), 30, "version 5 refused on both")
        wait_until(lambda: refused("5", "memory limit of 1,024 MiB"), 30, "the limit named on both")
        assert httpx.get(stack.url + "/health", timeout=10).status_code == 200
        count = len(answers)
        wait_until(lambda: len(answers) > count + 50, 30, "traffic after the refusals")
        refusals_end = len(answers)
        # version 6: loads and warms up, then fails on real traffic: rolled back by itself
        raising = "        if inputs['input'].any():\n            raise RuntimeError('bad rows')\n"
        failing = V2_MODEL.replace("        rows = ", raising + "        rows = ")
        watched = V2_TOML.replace("bake_s = 2", "bake_s = 60\nwindow_s = 10\nmin_requests = 10")
        bad = tar_of({"model.py": failing.encode(), "model.toml": watched.encode()})
        _publish(stack, bad, "6")
        wait_until(lambda: refused("6", "rolled back"), 60, "version 6 rolled back on both")
        # The index answers from one worker of each replica; the other worker rolls back
        # on its own errors or follows the mark at its next look (POLL_S=1). Counted
        # in `failed` below until then; every answer after that must be 200.
        wait_until(
            lambda: all(status == 200 for status, _ in answers[-60:]),
            30,
            "every worker back on version 2",
        )
        count = len(answers)
        wait_until(lambda: len(answers) > count + 100, 30, "traffic after the rollback")
        shadows_start = len(answers)
        # version 7, published with --strategy shadow: answers every request wrong (its
        # label map differs) beside version 2, which answers every client; refused
        shadowed = V2_TOML.replace("bake_s = 2", SHADOW_GATE)
        wrong = V2_MODEL.replace('"setosa-v2"', '"virginica-v7"')
        files = tar_of({"model.py": wrong.encode(), "model.toml": shadowed.encode()})
        _publish(stack, files, "7", "--strategy", "shadow")
        wait_until(lambda: refused("7", "agreement 0.00"), 90, "version 7 refused on both")
        # version 8, the same way: answers as version 2 does; promoted on both replicas
        same = V2_MODEL.replace("class Relabelled", "class Retrained")
        files = tar_of({"model.py": same.encode(), "model.toml": shadowed.encode()})
        _publish(stack, files, "8", "--strategy", "shadow")
        wait_until(lambda: served("8"), 90, "version 8 promoted and alone on both replicas")
        promoted_at = len(answers)
        wait_until(lambda: len(answers) > promoted_at + 100, 30, "traffic after the promotion")
    after_rollback = answers[count:shadows_start]
    shadowing = answers[shadows_start:]
    early = [status for status, _ in answers[:refusals_end]]
    assert set(early) == {200}, {s: early.count(s) for s in set(early)}
    failed = [status for status, _ in answers[refusals_end:count] if status != 200]
    # each of the 4 workers rolls back after min_requests (10) errors, or follows the mark
    assert len(failed) <= 4 * 10 + 20, f"{len(failed)} failed answers before the rollback"
    assert set(failed) <= {500}, set(failed)
    assert {status for status, _ in after_rollback} == {200}
    assert {version for _, version in after_rollback[-50:]} == {"2"}
    # under the shadows: every answer a 200, none from the refused version 7, and
    # version 8 alone once promoted
    assert {status for status, _ in shadowing} == {200}
    assert "7" not in {version for _, version in shadowing}
    assert {version for _, version in shadowing[-50:]} == {"8"}
    for cid in replicas:
        (state,) = json.loads(docker("inspect", cid).stdout)
        assert state["RestartCount"] == restarts_before[cid]
        assert state["State"]["OOMKilled"] is False
    metrics = httpx.get(stack.url + "/metrics", timeout=10).text
    assert 'mlapi_model_rollouts_total{model="iris",outcome="rolled_back"}' in metrics
    print(f"version 6 failed {len(failed)} requests before every replica rolled back")
    print(
        f"publish -> both replicas serving version 2 alone: {swap_s:.1f} s; "
        f"{len(answers)} requests in the test, the {len(failed)} failed ones all version 6's"
    )
