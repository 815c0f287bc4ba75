"""A model's versions as readiness and the repository index show them
(registry/versions.py, describe), how requests hold a version, and the bake's window
at its edge: what operators read, and what decides a rollback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlapi.errors import NotFound, NotReady
from mlapi.registry.versions import Bake, ModelRecord, ModelVersion, State


def _version(number: int, state: State = State.READY, reason: str | None = None) -> ModelVersion:
    version = ModelVersion("m", number, Path(f"/repo/m/{number}"), None)
    version.state, version.reason = state, reason
    return version


def _record(*numbers: int, **fields: object) -> ModelRecord:
    return ModelRecord("m", {n: _version(n) for n in numbers}, **fields)  # type: ignore[arg-type]


def test_a_version_describes_itself_with_its_reason_only_when_it_has_one() -> None:
    assert _version(3).describe() == {"name": "m", "version": "3", "state": "READY"}
    failed = _version(4)
    failed.fail("no room")
    assert failed.state is State.FAILED and not failed.refused
    shown = {"name": "m", "version": "4", "state": "FAILED", "reason": "no room"}
    assert failed.describe() == shown
    failed.fail("file 'w\udcff' is bad", refused=True)
    assert failed.describe()["reason"] == "file 'w\\udcff' is bad" and failed.refused


def test_readiness_lists_the_serving_versions_in_order() -> None:
    record = _record(2, 1)
    assert record.describe() == [
        {"name": "m", "version": "1", "state": "READY"},
        {"name": "m", "version": "2", "state": "READY"},
    ]
    assert record.describe(with_candidates=True) == record.describe()  # nothing else to show


def test_an_unloaded_or_broken_model_is_one_item_saying_why() -> None:
    assert _record(1, unloaded=True).describe() == [
        {"name": "m", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    assert _record(1, error="no version folders").describe(with_candidates=True) == [
        {"name": "m", "state": "FAILED", "reason": "no version folders"}
    ]


def test_the_index_adds_candidates_kept_versions_marks_and_a_folder_it_cannot_read() -> None:
    record = _record(
        2,
        candidates={4: _version(4, State.FAILED, "did not load"), 3: _version(3, State.LOADING)},
        previous={1: _version(1), 0: _version(0)},
        rolled_back={2: "rolled back by server b", 5: "rolled back: 5xx"},
        rollout_error="model.toml: bad float",
    )
    serving = {
        "name": "m",
        "version": "2",
        "state": "READY",
        "reason": "rolled back by server b; serving here until its replacement is READY",
    }
    assert record.describe() == [serving]
    assert record.describe(with_candidates=True) == [
        serving,
        {"name": "m", "version": "3", "state": "LOADING", "candidate": True},
        {"name": "m", "version": "4", "state": "FAILED", "reason": "did not load"}
        | {"candidate": True},
        {"name": "m", "version": "0", "state": "READY", "previous": True},
        {"name": "m", "version": "1", "state": "READY", "previous": True},
        {"name": "m", "version": "5", "state": "ROLLED_BACK", "reason": "rolled back: 5xx"},
        {"name": "m", "state": "FAILED", "reason": "model.toml: bad float", "candidate": True},
    ]


def test_a_request_resolves_to_the_newest_ready_version_or_says_why_not() -> None:
    record = _record(1, 2)
    assert record.ready_version(None).version == 2 and record.ready_version(1).version == 1
    with pytest.raises(NotFound, match="model 'm' has no version 7"):
        record.ready_version(7)
    record.versions[2].state = State.LOADING
    assert record.ready_version(None).version == 1 and not record.is_ready and record.serves()
    with pytest.raises(NotReady, match=r"model 'm' version 2 is LOADING$"):
        record.ready_version(2)
    record.versions[1].fail("broken")
    assert not record.serves()
    with pytest.raises(NotReady, match=r"model 'm' version 2 is LOADING$"):
        record.ready_version(None)  # the newest one's state is what a client is told
    with pytest.raises(NotReady, match="model 'm' version 1 is FAILED: broken"):
        record.ready_version(1)
    assert _record(1).is_ready and not _record().is_ready and not _record(1, error="x").is_ready
    with pytest.raises(NotReady, match=r"model 'm' is not ready: gone$"):
        _record(error="gone").ready_version(None)
    with pytest.raises(NotReady, match=r"model 'm' is not ready$"):
        _record().ready_version(None)


def test_requests_hold_a_version_and_release_it_with_their_outcome() -> None:
    version = _version(1)
    for _ in range(3):
        version.hold()
    version.release(failed=False)  # not baking: nothing is recorded
    assert version.holders == 2
    version.bake = Bake()
    version.release(failed=True)
    version.release(failed=False)
    assert version.holders == 0
    assert [failed for _, failed in version.bake.outcomes] == [True, False]
    assert version.bake.alert.is_set()


def test_the_bake_window_keeps_what_is_exactly_window_s_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    bake = Bake()
    bake.record(True)  # t=1000
    now[0] = 1010.0
    bake.record(False)  # t=1010
    now[0] = 1030.0
    assert bake.failures_within(30) == (1, 2)  # the first is exactly 30 s old: kept
    now[0] = 1030.5
    assert bake.failures_within(30) == (0, 1)  # now older: dropped, the second kept
    now[0] = 1100.0
    assert bake.failures_within(30) == (0, 0)
