"""Token buckets (serving/rates.py) on a clock the test moves: the rate and the
burst, a bucket shared by two workers through its file, and slots found again."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlapi.errors import RateLimited
from mlapi.serving import rates
from mlapi.serving.keys import Client

FAST = Client("fast", rate=20.0, burst=5)


def test_a_burst_then_the_rate_and_the_wait_until_the_next_token() -> None:
    buckets = rates.Buckets()
    assert [buckets.take(FAST, now=100.0) for _ in range(5)] == [0.0] * 5
    assert buckets.take(FAST, now=100.0) == pytest.approx(0.05)
    assert buckets.take(FAST, now=100.05) == 0.0  # one token came back
    assert buckets.take(FAST, now=100.05) == pytest.approx(0.05)
    assert buckets.take(FAST, now=200.0) == 0.0  # long idle: a full bucket, no more
    assert [buckets.take(FAST, now=200.0) for _ in range(5)].count(0.0) == 4


def test_over_five_seconds_the_rate_lets_through_rate_times_seconds_plus_the_burst() -> None:
    buckets = rates.Buckets()
    allowed = sum(buckets.take(FAST, now=1000.0 + i / 1000) == 0.0 for i in range(5001))
    assert allowed == 5 + 100  # 20 a second from 0 to 5.000 s, and the burst at the start


def test_a_client_without_a_rate_always_goes_and_each_client_has_its_own_bucket() -> None:
    buckets = rates.Buckets()
    assert all(buckets.take(Client("free"), now=1.0) == 0.0 for _ in range(1000))
    one = Client("one", rate=1.0, burst=1)
    two = Client("two", rate=1.0, burst=1)
    assert buckets.take(one, now=5.0) == 0.0 and buckets.take(two, now=5.0) == 0.0
    assert buckets.take(one, now=5.0) == pytest.approx(1.0)


def test_workers_share_a_bucket_through_its_file(tmp_path: Path) -> None:
    first = rates.Buckets(tmp_path / rates.FILE_NAME)
    second = rates.Buckets(tmp_path / rates.FILE_NAME)
    assert (tmp_path / rates.FILE_NAME).stat().st_size == rates.SIZE
    taken = [b.take(FAST, now=50.0) for b in (first, second, first, second, first, second)]
    assert taken[:5] == [0.0] * 5 and taken[5] > 0  # five in all, not five each
    first.close()
    second.close()


def test_a_slot_idle_for_a_day_is_taken_by_another_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rates, "_owner", lambda name: 7)  # every name hashes to slot 7
    buckets = rates.Buckets()
    old, new = Client("old", rate=1.0, burst=1), Client("new", rate=1.0, burst=1)
    assert buckets.take(old, now=10.0) == 0.0
    assert buckets.take(new, now=10.5) > 0  # the same owner mark: one bucket (a collision)
    monkeypatch.setattr(rates, "_owner", lambda name: 7 if name == "old" else 7 + rates.SLOTS)
    assert buckets.take(new, now=12.0) == 0.0  # its own slot, the next one
    assert buckets.take(new, now=12.0 + rates.IDLE_S + 1) == 0.0


def test_a_refused_request_says_when_to_retry() -> None:
    buckets = rates.Buckets()
    slow = Client("slow", rate=0.25, burst=1)
    buckets.check(slow)
    with pytest.raises(RateLimited) as refused:
        buckets.check(slow)
    assert refused.value.retry_after_s == 4
