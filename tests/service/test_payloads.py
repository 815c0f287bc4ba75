"""The payload log (issue 26): a sampled share of the requests, with inputs and
outputs, as JSON lines under the logs folder; rotated and capped per model;
redacted inputs never written; a full disk drops records and every request is
still answered."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from mlapi.app import asgi_app
from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import make_settings, wait_for
from tests.service.test_metrics import samples, value

ROW = [5.1, 3.5, 1.4, 0.2]
IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}


def _repository(tmp_path: Path, logging_table: str = "") -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", repo / "iris")
    if logging_table:
        (repo / "iris" / "model.toml").write_text(logging_table)
    return repo


@contextmanager
def _server(repo: Path, logs: Path, **env: Any) -> Iterator[TestClient]:
    """A server for the block; its payload log is flushed and closed at the end."""
    settings = make_settings(repo, MLAPI_LOG_DIR=str(logs), **env)
    with TestClient(asgi_app(settings), base_url="http://127.0.0.1") as client:
        wait_for(lambda: client.get("/health").status_code == 200, what="readiness")
        yield client


def _records(logs: Path, model: str = "iris") -> list[dict[str, Any]]:
    files = sorted((logs / "payloads" / model).glob("*.jsonl"))
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]


def test_the_sampled_share_is_written_with_inputs_outputs_and_outcome(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    repo = _repository(tmp_path, "[logging]\nsample = 0.3\n")
    with _server(repo, logs) as client:
        for n in range(2000):
            response = client.post(
                "/v2/models/iris/infer", json=IRIS, headers={"x-request-id": f"r-{n}"}
            )
            assert response.status_code == 200
        written = value(samples(client), "mlapi_payload_records_total", model="iris")
    records = _records(logs)
    # binomial(2000, 0.3): mean 600, sd 20.5; these bounds are 5 sd each side
    assert 497 <= len(records) <= 703, len(records)
    assert len(records) >= written  # the rest were flushed at the stop
    first = records[0]
    assert first["model"] == "iris" and first["version"] == 1 and first["status"] == 200
    assert first["client"] == "anonymous" and first["request_id"].startswith("r-")
    assert first["latency_ms"] > 0 and first["time"].endswith("Z")
    assert first["inputs"]["input"] == {"shape": [1, 4], "data": pytest.approx(ROW)}
    assert first["outputs"]["label"]["data"] in (["setosa"], [0])
    assert len({r["request_id"] for r in records}) == len(records)


def test_redacted_inputs_are_hashed_and_large_tensors_cut(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    table = '[logging]\nsample = 1.0\nredact = ["input"]\nmax_elements = 2\n'
    repo = _repository(tmp_path, table)
    # values whose text cannot turn up by chance (a time such as 13:25:03.547 holds "3.5")
    row = [5.123457, 3.456789, 1.4, 0.2]
    body = {"inputs": [{**IRIS["inputs"][0], "data": row}]}
    with _server(repo, logs) as client:
        assert client.post("/v2/models/iris/infer", json=body).status_code == 200
    (record,) = _records(logs)
    expected = hashlib.sha256(np.asarray([row], np.float32).tobytes()).hexdigest()
    assert record["inputs"]["input"] == {"shape": [1, 4], "sha256": expected}
    text = b"".join(p.read_bytes() for p in (logs / "payloads" / "iris").glob("*.jsonl"))
    assert b"5.12345" not in text and b"3.45678" not in text
    probabilities = record["outputs"]["probabilities"]
    assert probabilities["shape"] == [1, 3] and len(probabilities["data"]) == 2
    assert probabilities["truncated"] is True


def test_a_refused_request_is_logged_with_its_status_and_reason(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with _server(_repository(tmp_path), logs, MLAPI_PAYLOAD_SAMPLE="1") as client:
        bad = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
        }
        assert client.post("/v2/models/iris/infer", json=bad).status_code == 400
        assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200
    refused, answered = _records(logs)
    assert refused["status"] == 400 and "shape" in refused["error"]
    assert "outputs" not in refused and answered["status"] == 200


def test_off_by_default_and_without_a_logs_folder(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with _server(_repository(tmp_path), logs) as client:
        for _ in range(50):
            client.post("/v2/models/iris/infer", json=IRIS)
    assert not (logs / "payloads").exists()
    settings = make_settings(_repository(tmp_path / "b"), MLAPI_PAYLOAD_SAMPLE="1")
    with TestClient(asgi_app(settings), base_url="http://127.0.0.1") as client:
        wait_for(lambda: client.get("/health").status_code == 200, what="readiness")
        assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200


def test_files_rotate_and_the_oldest_go_under_the_cap(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    env = {
        "MLAPI_PAYLOAD_SAMPLE": "1",
        "MLAPI_PAYLOAD_FILE_BYTES": "4096",
        "MLAPI_PAYLOAD_MAX_BYTES": "16384",
    }
    with _server(_repository(tmp_path), logs, **env) as client:
        for n in range(600):  # ~200 bytes a record: ~120 KB in all, 8x the cap
            client.post("/v2/models/iris/infer", json=IRIS, headers={"x-request-id": f"r-{n}"})
            folder = logs / "payloads" / "iris"
            if n % 50 == 49:  # the cap holds all along, not only at the end
                assert sum(p.stat().st_size for p in folder.glob("*.jsonl")) <= 16384
        written = value(samples(client), "mlapi_payload_records_total", model="iris")
    files = sorted(folder.glob("*.jsonl"))
    assert len(files) >= 2 and all(p.stat().st_size <= 4096 for p in files)
    assert sum(p.stat().st_size for p in files) <= 16384
    kept = _records(logs)
    assert 0 < len(kept) < written  # the oldest went
    assert kept[-1]["request_id"] == "r-599"  # the newest stayed


def test_a_full_disk_drops_records_and_every_request_is_answered(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)], check=True)
    try:
        env = {"MLAPI_PAYLOAD_SAMPLE": "1", "MLAPI_PAYLOAD_MAX_BYTES": "1g"}
        with _server(_repository(tmp_path), logs, **env) as client:
            statuses = {
                client.post("/v2/models/iris/infer", json=IRIS).status_code for _ in range(1500)
            }
            found = samples(client)
        assert statuses == {200}
        assert value(found, "mlapi_payload_records_total", model="iris") > 0
        assert value(found, "mlapi_payload_dropped_total", model="iris", reason="disk") > 0
    finally:
        subprocess.run(["umount", str(logs)], check=True)


def _psi(client: TestClient) -> dict[str, float]:
    found = samples(client)
    return {
        dict(labels)["feature"]: v
        for (name, labels), v in found.items()
        if name == "mlapi_drift_psi" and dict(labels).get("model") == "iris"
    }


def _settled_psi(client: TestClient, requests: int) -> dict[str, float]:
    """The drift gauges once the writer has counted ``requests`` and published them:
    they are set once a second from what was counted, so a read while the last
    requests are counted sees part of them. Settled: two reads, a publish apart,
    alike, after the last request was written."""
    wait_for(
        lambda: value(samples(client), "mlapi_payload_records_total", model="iris") >= requests,
        what=f"{requests} requests written",
    )
    last: dict[str, float] = {}

    def settled() -> bool:
        nonlocal last
        seen, last = last, _psi(client)
        if seen != last or len(last) < 5:
            time.sleep(2.5)  # over PUBLISH_EVERY_S and a gather, on a busy machine too
            return False
        return True

    wait_for(settled, timeout_s=30, what="the drift gauges settled")
    return last


def test_drift_stays_low_on_the_reference_and_shows_a_shifted_feature(tmp_path: Path) -> None:
    """The first 500 requests become the reference (saved); 1,000 more from the same
    distribution keep every feature's PSI under 0.1; 1,000 with petal length moved
    by two standard deviations raise its PSI over 0.2, and the predicted labels' too,
    and leave the other features under 0.1."""
    logs = tmp_path / "logs"
    table = "[logging]\nsample = 1.0\nreference_requests = 500\ndrift_window = 1000\n"
    rng = np.random.default_rng(7)
    mean = np.array([5.8, 3.0, 3.8, 1.2], np.float32)
    spread = np.array([0.8, 0.4, 1.7, 0.7], np.float32)

    def send(client: TestClient, n: int, shift: float = 0.0) -> None:
        for _ in range(n):
            row = (mean + spread * rng.standard_normal(4)).astype(np.float32)
            row[2] += shift * spread[2]
            body = {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}
                ]
            }
            assert client.post("/v2/models/iris/infer", json=body).status_code == 200

    with _server(_repository(tmp_path, table), logs) as client:
        send(client, 1500)
        steady = _settled_psi(client, 1500)
        assert set(steady) >= {"input[0]", "input[1]", "input[2]", "input[3]", "output:label"}
        assert max(steady.values()) < 0.1, steady
        send(client, 1000, shift=2.0)
        shifted = _settled_psi(client, 2500)  # the window: the shifted 1,000 only
    assert shifted["output:label"] > 0.2, shifted
    assert max(shifted[f"input[{i}]"] for i in (0, 1, 3)) < 0.1, shifted
    with np.load(logs / "drift" / "iris-v1.reference.npz", allow_pickle=False) as saved:
        assert saved["input"].shape == (500, 4)  # the first 500 requests
        assert set(saved["output:label"].tolist()) <= {"setosa", "versicolor", "virginica"}


def test_pandas_reads_the_files_as_the_readme_shows(tmp_path: Path) -> None:
    import pandas as pd

    logs = tmp_path / "logs"
    with _server(_repository(tmp_path), logs, MLAPI_PAYLOAD_SAMPLE="1") as client:
        for n in range(20):
            client.post("/v2/models/iris/infer", json=IRIS, headers={"x-request-id": f"r-{n}"})
    (path,) = (logs / "payloads" / "iris").glob("*.jsonl")
    frame = pd.read_json(path, lines=True)
    assert len(frame) == 20 and list(frame["request_id"]) == [f"r-{n}" for n in range(20)]
    rows = pd.DataFrame([item["input"]["data"] for item in frame["inputs"]])
    assert rows.shape == (20, 4) and rows.iloc[0].tolist() == pytest.approx(ROW)


def test_a_versions_reference_npz_is_its_reference(tmp_path: Path) -> None:
    """With the version's own reference.npz, drift is measured from the first
    request: no live requests are kept toward a reference, none is saved."""
    logs = tmp_path / "logs"
    repo = _repository(tmp_path, "[logging]\nsample = 1.0\n")
    rng = np.random.default_rng(1)
    reference = (np.array(ROW, np.float32) + rng.normal(0, 0.3, (500, 4))).astype(np.float32)
    np.savez(repo / "iris" / "1" / "reference.npz", input=reference)
    with _server(repo, logs) as client:
        for _ in range(60):
            client.post("/v2/models/iris/infer", json=IRIS)
        wait_for(lambda: "input[0]" in _psi(client), what="drift from the first requests")
        # every request is the same row: each feature sits in one bin of ten
        assert min(_psi(client)[f"input[{i}]"] for i in range(4)) > 1
    assert not (logs / "drift").exists()


def test_a_restart_keeps_the_reference_it_saved(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    repo = _repository(tmp_path, "[logging]\nsample = 1.0\nreference_requests = 50\n")
    with _server(repo, logs) as client:
        for _ in range(50):
            client.post("/v2/models/iris/infer", json=IRIS)
    saved = logs / "drift" / "iris-v1.reference.npz"
    before = saved.stat().st_mtime_ns
    moved = {"inputs": [{**IRIS["inputs"][0], "data": [4.3, 2.0, 1.0, 0.1]}]}  # below every edge
    with _server(repo, logs) as client:  # the next server compares at once
        for _ in range(20):
            client.post("/v2/models/iris/infer", json=moved)
        wait_for(lambda: _psi(client).get("input[0]", 0) > 1, what="drift against the saved one")
    assert saved.stat().st_mtime_ns == before
