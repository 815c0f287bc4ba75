"""On-demand models (issue 24): a cold model's first request loads it, requests that
come while it loads share the load, the least recently used idle model is evicted
for room, never one with a request in flight nor one loaded less than
min_resident_s ago, a model too big on its own is a 507 with the numbers, an idle
one is unloaded, and a rollout reaches on-demand models, warm and cold. Real
servers, real model files (ONNX weights, Python models holding real memory), the
memory budget read from the server's own resident memory."""

from __future__ import annotations

import re
import shutil
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import tritonclient.grpc as triton

from tests.conftest import wait_for
from tests.fixtures.models import expected_label, vector_toml, write_python_model, write_wide_logreg
from tests.process.conftest import Server, metric, status_of

MIB = 1 << 20
ON_DEMAND = 'load = "on_demand"\n'

# A Python model holding HOLD_MB of memory of its own (pages written, so resident);
# it answers x times its version; a request whose x is k > 0 waits for the file
# RELEASE + "k" (at most 60 s), so a test can keep requests in flight.
HOLD_MB = 60
HOLDER = """
    import time
    from pathlib import Path

    import numpy as np

    RELEASE = Path({release!r})


    class Holder:
        def load(self, path):
            self.ballast = np.ones({mb} * 2**20 // 8)
            self.factor = float(Path(path).name)

        def predict(self, inputs):
            x = inputs["x"]
            if x.any():
                release = Path(f"{{RELEASE}}{{int(x.flat[0])}}")
                deadline = time.monotonic() + 60
                while not release.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            return {{"y": x * self.factor * self.ballast[0]}}
"""


def _holder(repo: Path, name: str, release: Path, version: int = 1, extra: str = "") -> Path:
    toml = ON_DEMAND + f"memory_mb = {HOLD_MB}\n" + textwrap.dedent(vector_toml()) + extra
    source = HOLDER.format(release=str(release), mb=HOLD_MB)
    return write_python_model(repo, name, source, toml, version=version)


def _infer(server: Server, name: str, x: float = 0.0, timeout: float = 30) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [x]}]}
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=timeout)


def _index(server: Server) -> dict[str, dict[str, Any]]:
    """The repository index by model (the newest version each model shows)."""
    items = httpx.post(f"{server.url}/v2/repository/index", json={}, timeout=10).json()
    return {item["name"]: item for item in items if not item.get("candidate")}


def _count(server: Server, prefix: str) -> float:
    """A counter's value, 0 while the server has no such sample yet."""
    try:
        return metric(server, prefix)
    except AssertionError:
        return 0.0


def _loads(server: Server, name: str, reason: str = "demand") -> float:
    return _count(server, f'mlapi_model_loads_total{{model="{name}",reason="{reason}"')


def _evictions(server: Server, name: str, reason: str = "memory") -> float:
    return _count(server, f'mlapi_model_evictions_total{{model="{name}",reason="{reason}"')


def _resident(server: Server) -> int:
    return int(metric(server, "mlapi_process_resident_memory_bytes"))


def test_a_cold_model_loads_at_its_first_request_and_fifty_share_one_load(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    path = write_wide_logreg(repo, "wide", mb=20, seed=3)
    (repo / "wide" / "model.toml").write_text(ON_DEMAND)
    other = write_wide_logreg(repo, "other", mb=5, seed=4)
    (repo / "other" / "model.toml").write_text(ON_DEMAND)
    server = start_server(grpc=True, MODEL_PATH=str(repo))
    # ready before any load: every on-demand model is loadable
    health = httpx.get(server.url + "/health", timeout=5).json()
    assert {m["name"]: m["state"] for m in health["models"]} == {
        "wide": "LOADABLE",
        "other": "LOADABLE",
    }
    ready = httpx.get(server.url + "/v2/models/wide/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "state": "LOADABLE"}
    assert _resident(server) < 200 * MIB  # nothing of 20 MiB of weights is loaded

    rows = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)

    def first(row: np.ndarray) -> httpx.Response:
        body = {
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}
            ]
        }
        return httpx.post(server.url + "/v2/models/wide/infer", json=body, timeout=60)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(first, rows))
    assert [a.status_code for a in answers] == [200] * 50, answers[0].text
    got = [a.json()["outputs"][0]["data"][0] for a in answers]
    assert got == [expected_label(path, row) for row in rows]
    assert _loads(server, "wide") == 1  # fifty first requests, one load
    # those that waited for the load say how long (Server-Timing); a warm one does not
    timed = [a.headers["server-timing"] for a in answers if "server-timing" in a.headers]
    assert 1 <= len(timed) <= 50 and all(re.fullmatch(r"load;dur=\d+\.\d", t) for t in timed)
    assert "server-timing" not in first(rows[0]).headers
    waited = metric(server, 'mlapi_model_cold_start_seconds_count{model="wide"')
    assert 1 <= waited <= 50
    assert httpx.get(server.url + "/v2/models/wide/ready", timeout=5).json()["state"] == "READY"
    shown = _index(server)["wide"]
    assert shown["state"] == "READY" and shown["cache"]["resident"] is True
    assert shown["cache"]["loads"] == {"demand": 1} and shown["cache"]["memory_mb"] > 10
    assert "last_used" in shown["cache"]
    assert _index(server)["other"]["state"] == "LOADABLE"
    # gRPC: the same plane: ready (loadable) before, loaded by its first inference
    assert server.grpc is not None
    client = triton.InferenceServerClient(server.grpc)
    try:
        assert client.is_model_ready("other") is True
        tensor = triton.InferInput("features", [1, 64], "FP32")
        tensor.set_data_from_numpy(rows[:1])
        label = client.infer("other", [tensor]).as_numpy("label").tolist()
    finally:
        client.close()
    assert label == [expected_label(other, rows[0])]
    assert _loads(server, "other") == 1
    assert metric(server, 'mlapi_model_resident{model="other"') == 1


def _room_for_two(
    start_server: Callable[..., Server], tmp_path: Path, min_resident_s: float
) -> tuple[Server, Path, int]:
    """(a server, the holders' release path, its memory limit) with three holders, h1
    to h3, on demand, and a memory limit whose worker share holds two and not three:
    the resident memory of a first server with one holder loaded, plus room for 1.5
    more, plus the 64 MiB kept free."""
    repo, release = tmp_path / "repo", tmp_path / "release"
    for name in ("h1", "h2", "h3"):
        _holder(repo, name, release)
    probe = start_server(MODEL_PATH=str(repo))
    assert _infer(probe, "h1").status_code == 200
    limit = _resident(probe) + int(1.5 * HOLD_MB * MIB) + 64 * MIB
    probe.stop()
    server = start_server(
        MODEL_PATH=str(repo),
        MLAPI_MEMORY_LIMIT=str(limit),
        MLAPI_MIN_RESIDENT_S=str(min_resident_s),
    )
    return server, release, limit


def test_the_least_recently_used_idle_model_goes_and_one_in_flight_never(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server, release, limit = _room_for_two(start_server, tmp_path, min_resident_s=0)
    for name in ("h1", "h2", "h1"):  # h1 used last: h2 is the least recently used
        assert _infer(server, name).status_code == 200
    assert _evictions(server, "h1") == _evictions(server, "h2") == 0
    assert _infer(server, "h3").status_code == 200  # no room for three: one goes
    assert _evictions(server, "h2") == 1 and _evictions(server, "h1") == 0
    states = {name: item["state"] for name, item in _index(server).items()}
    assert states == {"h1": "READY", "h2": "LOADABLE", "h3": "READY"}
    assert _resident(server) < limit - 64 * MIB

    # h1 holds a request in flight (oldest use of all now) while h2 must come back
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_infer, server, "h1", 1.0, 90)
        wait_for(
            lambda: _count(server, 'mlapi_inflight_requests{model="h1"') == 1,
            timeout_s=10,
            what="h1's request in flight",
        )
        assert _infer(server, "h2").status_code == 200
        assert _evictions(server, "h1") == 0  # busy: passed over for h3, idle
        assert _evictions(server, "h3") == 1
        Path(f"{release}1").touch()
        answer = held.result(timeout=60)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [1.0]
    assert _loads(server, "h1") == 1

    # both resident ones in flight: the cold one waits for room, is not refused
    with ThreadPoolExecutor(3) as pool:
        held_h1 = pool.submit(_infer, server, "h1", 2.0, 90)
        held_h2 = pool.submit(_infer, server, "h2", 2.0, 90)
        wait_for(
            lambda: _count(server, "mlapi_inflight_requests") == 2,
            timeout_s=10,
            what="h1 and h2 in flight",
        )
        cold = pool.submit(_infer, server, "h3", 0.0, 90)
        time.sleep(1.5)  # time to be refused, if it were: a 507 comes back in milliseconds
        assert not cold.done()  # it waits while both are in use
        Path(f"{release}2").touch()
        answers = [held_h1.result(60), held_h2.result(60), cold.result(60)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[2].text
    assert _loads(server, "h3") == 2
    assert "Traceback" not in server.log()


def test_a_model_loaded_less_than_min_resident_s_ago_stays_and_the_load_is_a_507(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server, _, _ = _room_for_two(start_server, tmp_path, min_resident_s=600)
    assert _infer(server, "h1").status_code == 200
    assert _infer(server, "h2").status_code == 200
    refused = _infer(server, "h3")  # both others loaded just now: neither may go
    assert refused.status_code == 507, refused.text
    error = refused.json()["error"]
    assert "needs about 60 MiB" in error and "is left of this worker's share" in error
    assert _evictions(server, "h1") == _evictions(server, "h2") == 0
    # refused for now, not failed: still loadable, the server still ready
    assert _index(server)["h3"]["state"] == "LOADABLE"
    assert status_of(server.url + "/health") == 200
    assert _infer(server, "h1").status_code == 200


def test_a_model_too_big_on_its_own_is_reported_and_its_requests_get_507(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo, release = tmp_path / "repo", tmp_path / "release"
    _holder(repo, "fits", release)
    folder = _holder(repo, "huge", release)
    toml = (folder / "model.toml").read_text().replace(f"memory_mb = {HOLD_MB}", "memory_mb = 5000")
    (folder / "model.toml").write_text(toml)
    server = start_server(wait_ready=False, MODEL_PATH=str(repo), MLAPI_MEMORY_LIMIT="2g")
    wait_for(lambda: "huge" in str(_index(server)), timeout_s=30, what="the index")
    health = httpx.get(server.url + "/health", timeout=5)
    assert health.status_code == 503  # a model that can never load is a deployment's fault
    states = {m["name"]: m for m in health.json()["models"]}
    assert states["fits"]["state"] == "LOADABLE" and states["huge"]["state"] == "FAILED"
    refused = _infer(server, "huge")
    assert refused.status_code == 507
    assert "needs about 5,000 MiB" in refused.json()["error"]
    assert "2,048 MiB" in refused.json()["error"]
    assert _loads(server, "huge") == 0
    assert _infer(server, "fits").status_code == 200  # the others serve


def test_an_idle_model_is_unloaded_and_its_next_request_loads_it_again(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo, release = tmp_path / "repo", tmp_path / "release"
    _holder(repo, "idle", release, extra="\n[on_demand]\nidle_unload_s = 1\nmin_resident_s = 0\n")
    _holder(repo, "kept", release)  # the server's default: never unloaded for idling
    server = start_server(MODEL_PATH=str(repo))
    assert _infer(server, "idle").status_code == 200
    assert _infer(server, "kept").status_code == 200
    before = _resident(server)
    wait_for(lambda: _evictions(server, "idle", "idle") == 1, timeout_s=15, what="idle unload")
    assert _index(server)["idle"]["state"] == "LOADABLE"
    assert _index(server)["kept"]["state"] == "READY"
    assert _evictions(server, "kept", "idle") == 0
    # what it held went back to the kernel (malloc_trim after the unload)
    assert _resident(server) < before - HOLD_MB * MIB // 2
    again = httpx.post(server.url + "/v1/models/idle:predict", json={"instances": [0.0]})
    assert again.status_code == 200, again.text
    assert again.json() == {"predictions": [0.0]} and "load;dur=" in again.headers["server-timing"]
    assert _loads(server, "idle") == 2


def test_a_rollout_reaches_on_demand_models_warm_and_cold(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo, release = tmp_path / "repo", tmp_path / "release"
    quick = "\n[rollout]\nbake_s = 0\n"
    _holder(repo, "warm", release, extra=quick)
    _holder(repo, "cold", release, extra=quick)
    server = start_server(MODEL_PATH=str(repo), MLAPI_REPOSITORY_POLL_S="0.2")
    assert _infer(server, "warm").json()["model_version"] == "1"
    # version 2 of each: copied in the way `mlapi models publish` leaves a folder
    for name in ("warm", "cold"):
        staging = tmp_path / f"staging-{name}"
        _holder(staging, name, release, version=2, extra=quick)
        shutil.move(str(staging / name / "2"), str(repo / name / "2"))
    # the loaded one rolls to version 2 beside version 1, which answers until then
    wait_for(
        lambda: (
            _index(server)["warm"].get("version") == "2"
            and _index(server)["warm"]["state"] == "READY"
        ),
        timeout_s=30,
        what="warm rolled to version 2",
    )
    assert _loads(server, "warm", "rollout") == 1
    answer = _infer(server, "warm", 0.0).json()
    assert answer["model_version"] == "2"
    # the cold one is not loaded by the rollout: its record follows the folder, and
    # its next request loads version 2
    wait_for(
        lambda: _index(server)["cold"].get("version") == "2",
        timeout_s=30,
        what="cold's record at version 2",
    )
    assert _index(server)["cold"]["state"] == "LOADABLE"
    assert _loads(server, "cold", "rollout") == 0 and _loads(server, "cold") == 0
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [0.0]}]}
    cold = httpx.post(server.url + "/v2/models/cold/infer", json=body, timeout=30).json()
    assert cold["model_version"] == "2"
    assert _loads(server, "cold") == 1
    meta = httpx.get(server.url + "/v2/models/cold", timeout=5).json()
    assert meta["versions"] == ["2"] and meta["inputs"][0]["name"] == "x"


def test_a_gated_rollout_of_a_cold_model_starts_at_its_first_load(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Version 2 as a shadow trial of version 1, the model on demand, no repository
    poll: nothing loads at start; the first request loads version 1 and starts the
    trial beside it, which the index shows."""
    repo, release = tmp_path / "repo", tmp_path / "release"
    shadow = '\n[rollout]\nstrategy = "shadow"\nmin_compared = 1000000\n'
    _holder(repo, "gated", release, version=1, extra=shadow)
    _holder(repo, "gated", release, version=2, extra=shadow)
    server = start_server(MODEL_PATH=str(repo))
    items = httpx.post(f"{server.url}/v2/repository/index", json={}, timeout=10).json()
    assert [(i["version"], i["state"]) for i in items] == [("1", "LOADABLE")]
    assert _infer(server, "gated").json()["model_version"] == "1"

    def trial() -> list[dict[str, Any]]:
        found = httpx.post(f"{server.url}/v2/repository/index", json={}, timeout=10).json()
        return [i for i in found if "trial" in i]

    wait_for(lambda: bool(trial()) and trial()[0]["state"] == "READY", 20, "the trial")
    assert trial()[0]["version"] == "2"
    assert _infer(server, "gated").json()["model_version"] == "1"  # v1 answers clients
