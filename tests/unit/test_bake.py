"""The bake's gate, alone (issue 22's review: `min_requests` and `max_error_ratio`
ignored, and clients' own errors counted against a version, each survived the
tests): what counts as a version's failure, and when failures roll it back."""

from __future__ import annotations

from typing import Any

import pytest

from mlapi.errors import (
    BadRequest,
    GatewayTimeout,
    InternalError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from mlapi.observability.metrics import Metrics
from mlapi.registry.versions import Bake, ModelVersion
from mlapi.repository.config import RolloutConfig
from mlapi.serving.tracking import Tracking

GATE = RolloutConfig(bake_s=60, window_s=30, max_error_ratio=0.2, min_requests=10)


def _bake(failed: int, ok: int) -> Bake:
    bake = Bake()
    for _ in range(failed):
        bake.record(True)
    for _ in range(ok):
        bake.record(False)
    return bake


def test_fewer_requests_than_min_requests_never_roll_back() -> None:
    assert _bake(9, 0).breached(GATE) is None  # all nine failed, but only nine
    assert _bake(10, 0).breached(GATE) == (10, 10)


def test_the_ratio_must_be_passed_not_met() -> None:
    assert _bake(2, 8).breached(GATE) is None  # 20%: not over 0.2
    assert _bake(3, 8).breached(GATE) == (3, 11)  # 27%
    lenient = RolloutConfig(max_error_ratio=0.5, min_requests=10)
    assert _bake(3, 8).breached(lenient) is None


def test_a_failure_wakes_the_watcher_at_once() -> None:
    bake = Bake()
    bake.record(False)
    assert not bake.alert.is_set()
    bake.record(True)
    assert bake.alert.is_set()


class _Registry:
    def knows(self, name: str) -> bool:
        return True


@pytest.mark.parametrize(
    ("error", "blamed"),
    [
        (InternalError("abc"), True),  # the model raised
        (GatewayTimeout("slow", queued=False), True),  # its own run passed the deadline
        (GatewayTimeout("slow", queued=True), False),  # it waited behind others
        (BadRequest("bad input"), False),  # the client's own mistakes
        (PayloadTooLarge("too big"), False),
        (Unauthorized("no key"), False),
        (NotFound("nope"), False),
    ],
)
def test_only_the_versions_own_failures_count_against_it(error: Any, blamed: bool) -> None:
    """30 bad requests rolled a good version back when clients' 4xx counted."""
    tracking = Tracking(Metrics(), _Registry(), "off", 10)  # type: ignore[arg-type]
    version = ModelVersion("m", 2, None, None)  # type: ignore[arg-type]
    version.bake = Bake()
    tracked = tracking.begin("m", "POST", "/", None)
    tracked.resolved(version)
    assert version.holders == 1
    tracked.failed(error)
    assert version.holders == 0
    assert list(failed for _, failed in version.bake.outcomes) == [blamed]


def test_the_index_never_shows_a_version_marked_rolled_back_as_plainly_serving() -> None:
    """A server that still serves a version another marked rolled back (its
    replacement not loaded here yet) says so; the mark used to be hidden behind the
    version's READY item."""
    from mlapi.registry.versions import ModelRecord, State

    serving = ModelVersion("m", 2, None, None, state=State.READY)  # type: ignore[arg-type]
    record = ModelRecord("m", versions={2: serving}, rolled_back={2: "rolled back: 9 of 10"})
    (item,) = record.describe(with_candidates=True)
    assert item["version"] == "2" and item["state"] == "READY"
    assert "rolled back: 9 of 10" in str(item["reason"])
    assert "serving here until its replacement is READY" in str(item["reason"])
