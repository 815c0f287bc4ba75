"""Keys per client on the production compose deployment (issue 25), with the keys
overlay: two clients with their own models and rates through nginx, both added with
the README's command (`mlapi keys` in a one-off container of the image, writing the
host's secret file), then one revoked under traffic: it is refused by both replicas
within a look at the file, and the other sees nothing but answers, no restart."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.e2e.conftest import Stack, make_stack, wait_until, write_api_key
from tests.fixtures.archives import version_tar

pytestmark = pytest.mark.e2e
FILES = ["docker-compose.yml", "docker-compose.prod.yml", "docker-compose.keys.yml"]
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}


def _keys(stack: Stack, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The README's command: `mlapi keys` in a one-off container of the image, on the
    host's secrets folder."""
    return stack.compose_input(
        b"",
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-v",
        f"{stack.folder / 'secrets'}:/keys",
        "ml-api",
        "keys",
        "--file",
        "/keys/api_keys.toml",
        *args,
    )


def _infer(stack: Stack, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v2/models/{model}/infer",
        json=IRIS,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


@contextmanager
def _client(stack: Stack, key: str, model: str, per_second: float) -> Iterator[list[int]]:
    """One client's steady traffic (a new connection each: both replicas answer)."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                statuses.append(_infer(stack, key, model).status_code)
            except httpx.TransportError:
                statuses.append(0)
            stop.wait(1 / per_second)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(30)


def test_two_clients_and_a_revocation_under_traffic(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, FILES)
    stack.env["MLAPI_KEYS_POLL_S"] = "1"
    stack_factory.append(stack)
    write_api_key(stack)
    keys_file = stack.folder / "secrets" / "api_keys.toml"
    keys_file.write_text("")
    os.chown(keys_file, 1000, 1000)
    keys_file.chmod(0o600)
    stack.compose("build", timeout_s=900)
    added = {}
    for name, args in {
        "iris-app": ["--models", "iris"],
        "spare-app": ["--models", "spare", "--rate", "5", "--burst", "5"],
    }.items():
        done = _keys(stack, "add", name, *args)
        assert done.returncode == 0, done.stderr
        added[name] = done.stdout.decode().strip()
    assert keys_file.stat().st_uid == 1000 and added["iris-app"] not in keys_file.read_text()
    stack.compose("up", "-d", "--wait", "--wait-timeout", "240")
    published = stack.compose_input(
        version_tar(DEFAULT_MODEL_PATH / "iris" / "1"),
        "exec",
        "-T",
        "ml-api",
        "mlapi",
        "models",
        "publish",
        "-",
        "--name",
        "spare",
    )
    assert published.returncode == 0, published.stderr
    iris_key, spare_key = added["iris-app"], added["spare-app"]
    wait_until(lambda: _infer(stack, spare_key, "spare").status_code == 200, 60, "spare served")
    # every worker of both replicas picks spare up at its own next look (within
    # MLAPI_REPOSITORY_POLL_S of each other): until then one may still answer 404
    workers = 2 * len(stack.containers("ml-api"))  # WORKERS=2 in the compose file

    def spare_everywhere() -> bool:
        logs = stack.compose("logs", "--no-color", "ml-api").stdout
        return logs.count("model spare v1 READY") >= workers

    wait_until(spare_everywhere, 60, "spare loaded by every worker of both replicas")

    # each client its own models; the rate of spare-app answered 429 with Retry-After
    assert _infer(stack, iris_key, "iris").status_code == 200
    assert _infer(stack, iris_key, "spare").status_code == 403
    assert _infer(stack, spare_key, "iris").status_code == 403
    burst = [_infer(stack, spare_key, "spare") for _ in range(40)]
    limited = [r for r in burst if r.status_code == 429]
    assert limited and {r.status_code for r in burst} == {200, 429}
    assert int(limited[0].headers["retry-after"]) >= 1
    time.sleep(2)  # spare-app's buckets (one a replica) fill again

    # iris-app revoked with the README's command while both send traffic; spare-app
    # under its rate even if the proxy sends all of it to one replica (its round robin
    # is over all requests: two clients at one pace can each meet one replica only)
    with (
        _client(stack, spare_key, "spare", 4) as spare,
        _client(stack, iris_key, "iris", 10) as iris,
    ):
        wait_until(lambda: iris.count(200) > 20 and spare.count(200) > 10, 60, "traffic")
        revoked = _keys(stack, "revoke", "iris-app")
        assert revoked.returncode == 0, revoked.stderr
        wait_until(lambda: iris[-20:] == [401] * 20, 60, "iris-app refused by every replica")
        refused_at = len(iris)
        wait_until(lambda: len(iris) > refused_at + 30, 60, "more of iris-app's traffic")
        wait_until(lambda: len(spare) > 30, 60, "more of spare-app's traffic")
    assert set(iris[refused_at:]) == {401}  # no replica let it back in
    assert set(spare) == {200}, sorted(set(spare))  # the other client: never an error
    logs = stack.compose("logs", "--no-color", "ml-api").stdout
    assert logs.count("keys file read: 2 keys") >= 2  # every worker of both replicas
    for key in added.values():
        assert key not in logs
    assert all(c["RestartCount"] == 0 for c in stack.containers("ml-api"))
