"""On-demand models in-process: the requests that waited for a model's load are served
by it, even when the cache told the model to drain (another load needs room) before
they could take hold of it; a request that comes after the drain waits for the
model to go and load again, and is answered too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.fixtures.models import expected_label, write_wide_logreg


def _metric(client: TestClient, prefix: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def test_the_requests_that_waited_for_a_load_are_served_by_it_though_it_drains(
    serve_app: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    path = write_wide_logreg(repo, "wide", mb=1, seed=3)
    (repo / "wide" / "model.toml").write_text('load = "on_demand"\n')
    client = serve_app(repo)
    cache = client.app.state.registry._core.cache  # type: ignore[attr-defined]
    real = cache.demand
    drained: list[str] = []

    async def load_then_drain(record: Any, start_trial: Any) -> None:
        await real(record, start_trial)
        # told to drain before this load's waiters ran (what another load's make_room
        # does to a model in use when nothing else can go)
        record.cache.draining = True
        drained.append(record.name)

    monkeypatch.setattr(cache, "demand", load_then_drain)
    row = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}]
    }
    loads = 'mlapi_model_loads_total{model="wide",reason="demand"}'

    answer = client.post("/v2/models/wide/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [expected_label(path, row)]
    assert drained == ["wide"] and _metric(client, loads) == 1  # served by its own load
    assert _metric(client, 'mlapi_model_evictions_total{model="wide"') == 0

    # a new request meets the drain: the model goes (idle now), loads again, answers
    monkeypatch.setattr(cache, "demand", real)
    again = client.post("/v2/models/wide/infer", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["outputs"][0]["data"] == [expected_label(path, row)]
    assert _metric(client, loads) == 2
    assert _metric(client, 'mlapi_model_evictions_total{model="wide",reason="memory"}') == 1
    assert cache.core.records["wide"].cache.draining is False


def test_a_request_whose_model_is_evicted_as_it_loads_loads_it_again_in_its_time(
    serve_app: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    path = write_wide_logreg(repo, "wide", mb=1, seed=4)
    (repo / "wide" / "model.toml").write_text('load = "on_demand"\n')
    client = serve_app(repo)
    cache = client.app.state.registry._core.cache  # type: ignore[attr-defined]
    real = cache.demand
    evicted: list[str] = []

    async def load_then_evict(record: Any, start_trial: Any) -> None:
        await real(record, start_trial)
        if len(evicted) < 4:  # gone before its waiter could hold it, four times over
            await cache.evict(record, "memory")
            evicted.append(record.name)

    monkeypatch.setattr(cache, "demand", load_then_evict)
    row = np.random.default_rng(6).standard_normal(64).astype(np.float32)
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}]
    }
    answer = client.post("/v2/models/wide/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [expected_label(path, row)]
    assert evicted == ["wide"] * 4
    assert _metric(client, 'mlapi_model_loads_total{model="wide",reason="demand"}') == 5
