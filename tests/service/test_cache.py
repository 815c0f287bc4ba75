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
from tests.service.test_metrics import samples, value


def _on_demand(
    serve_app: Callable[..., TestClient], tmp_path: Path, seed: int
) -> tuple[TestClient, Any, dict[str, Any], int]:
    """A server of one on-demand model, wide: (its client, its worker's cache, a
    request's body, the label the model answers to it)."""
    repo = tmp_path / "repo"
    path = write_wide_logreg(repo, "wide", mb=1, seed=seed)
    (repo / "wide" / "model.toml").write_text('load = "on_demand"\n')
    client = serve_app(repo)
    cache = client.app.state.registry._core.cache  # type: ignore[attr-defined]
    row = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}]
    }
    return client, cache, body, expected_label(path, row)


def _loads(client: TestClient) -> float:
    return value(samples(client), "mlapi_model_loads_total", model="wide", reason="demand")


def test_the_requests_that_waited_for_a_load_are_served_by_it_though_it_drains(
    serve_app: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, cache, body, label = _on_demand(serve_app, tmp_path, seed=3)
    real = cache.demand
    drained: list[str] = []

    async def load_then_drain(record: Any, start_trial: Any) -> None:
        await real(record, start_trial)
        # told to drain before this load's waiters ran (what another load's make_room
        # does to a model in use when nothing else can go)
        record.cache.draining = True
        drained.append(record.name)

    monkeypatch.setattr(cache, "demand", load_then_drain)
    answer = client.post("/v2/models/wide/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [label]
    assert drained == ["wide"] and _loads(client) == 1  # served by its own load
    assert not [key for key in samples(client) if key[0] == "mlapi_model_evictions_total"]

    # a new request meets the drain: the model goes (idle now), loads again, answers
    monkeypatch.setattr(cache, "demand", real)
    again = client.post("/v2/models/wide/infer", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["outputs"][0]["data"] == [label]
    assert _loads(client) == 2
    found = samples(client)
    assert value(found, "mlapi_model_evictions_total", model="wide", reason="memory") == 1
    assert cache.core.records["wide"].cache.draining is False


def test_a_request_whose_model_is_evicted_as_it_loads_loads_it_again_in_its_time(
    serve_app: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, cache, body, label = _on_demand(serve_app, tmp_path, seed=4)
    real = cache.demand
    evicted: list[str] = []

    async def load_then_evict(record: Any, start_trial: Any) -> None:
        await real(record, start_trial)
        if len(evicted) < 4:  # gone before its waiter could hold it, four times over
            await cache.evict(record, "memory")
            evicted.append(record.name)

    monkeypatch.setattr(cache, "demand", load_then_evict)
    answer = client.post("/v2/models/wide/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [label]
    assert evicted == ["wide"] * 4
    assert _loads(client) == 5
