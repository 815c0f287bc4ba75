from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlapi.batching import Batcher
from mlapi.errors import Overloaded


class Model:
    """Doubles its input; records every batch; can be held to build a queue."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def predict(self, inputs: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        self.started.set()
        self.gate.wait(timeout=10)
        x = inputs["x"]
        if (x < 0).any():
            raise ValueError("negative input")
        self.calls.append(x.shape[0])
        return {"y": x * 2}


def _batcher(model: Model, executor: ThreadPoolExecutor, **options: object) -> Batcher:
    settings: dict[str, object] = {
        "batchable": True,
        "max_batch_size": 8,
        "max_delay_ms": 0.0,
        "max_queue": 16,
    }
    settings.update(options)
    return Batcher("m", model.predict, executor, **settings)  # type: ignore[arg-type]


def _rows(value: float, rows: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=np.float32)}


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_lone_request_runs_at_once_unbatched() -> None:
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, max_delay_ms=5000.0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            result = await batcher.submit(_rows(3.0), ("y",))
            # the 5 s delay does not apply when idle (a bound far from any busy machine's
            # noise: the delay, had it applied, would be twice it)
            assert loop.time() - started < 2.5
            np.testing.assert_array_equal(result["y"], np.full((1, 2), 6.0))
            await batcher.close()

    run(scenario())
    assert model.calls == [1]


def test_requests_that_arrive_while_busy_ride_one_batch_and_split_back() -> None:
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, max_batch_size=16)
            model.gate.clear()
            first = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            rest = [
                asyncio.ensure_future(batcher.submit(_rows(float(i), rows=i), ("y",)))
                for i in range(2, 5)
            ]
            await asyncio.sleep(0.01)
            assert batcher.queue_depth == 3
            model.gate.set()
            results = await asyncio.gather(first, *rest)
            for i, result in enumerate(results, start=1):
                np.testing.assert_array_equal(result["y"], np.full((i, 2), 2.0 * i))
            await batcher.close()

    run(scenario())
    assert model.calls == [1, 2 + 3 + 4]


def test_batches_respect_max_rows_and_compatible_shapes() -> None:
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, max_batch_size=4)
            model.gate.clear()
            blocker = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            queued = [
                asyncio.ensure_future(batcher.submit(_rows(1.0, rows=3), ("y",))),
                asyncio.ensure_future(batcher.submit(_rows(1.0, rows=3), ("y",))),
                asyncio.ensure_future(batcher.submit(_rows(1.0, width=5), ("y",))),
            ]
            await asyncio.sleep(0.01)
            model.gate.set()
            results = await asyncio.gather(blocker, *queued)
            assert [r["y"].shape for r in results] == [(1, 2), (3, 2), (3, 2), (1, 5)]
            await batcher.close()

    run(scenario())
    assert sorted(model.calls) == [1, 1, 3, 3]  # 3+3 > 4 rows, width 5 never stacks with 2


def test_a_failing_request_does_not_fail_its_batch_neighbours() -> None:
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool)
            model.gate.clear()
            blocker = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            good = asyncio.ensure_future(batcher.submit(_rows(2.0), ("y",)))
            bad = asyncio.ensure_future(batcher.submit(_rows(-1.0), ("y",)))
            also_good = asyncio.ensure_future(batcher.submit(_rows(3.0), ("y",)))
            await asyncio.sleep(0.01)
            model.gate.set()
            await blocker
            assert (await good)["y"][0, 0] == 4.0
            assert (await also_good)["y"][0, 0] == 6.0
            with pytest.raises(ValueError, match="negative"):
                await bad
            await batcher.close()

    run(scenario())


def test_a_full_queue_sheds_load_and_a_cancelled_request_leaves_it() -> None:
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, max_queue=2)
            model.gate.clear()
            blocker = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            queued = [asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",))) for _ in range(2)]
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded):
                await batcher.submit(_rows(1.0), ("y",))
            queued[0].cancel()
            await asyncio.sleep(0.01)
            assert batcher.queue_depth == 1
            model.gate.set()
            await blocker
            assert (await queued[1])["y"].shape == (1, 2)
            await batcher.close()

    run(scenario())
    assert sum(model.calls) == 2  # the cancelled request never ran


def test_unbatchable_models_run_one_request_at_a_time() -> None:
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, batchable=False)
            results = await asyncio.gather(
                *(batcher.submit(_rows(1.0, rows=2), ("y",)) for _ in range(5))
            )
            assert all(r["y"].shape == (2, 2) for r in results)
            await batcher.close()

    run(scenario())
    assert model.calls == [2] * 5


def test_queued_work_of_a_client_that_has_gone_is_dropped_unrun() -> None:
    from mlapi.errors import ClientGone

    model = Model()
    gone = {"flag": False}

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool)
            model.gate.clear()
            blocker = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            left = asyncio.ensure_future(
                batcher.submit(_rows(2.0), ("y",), gone=lambda: gone["flag"])
            )
            stayed = asyncio.ensure_future(batcher.submit(_rows(3.0), ("y",), gone=lambda: False))
            await asyncio.sleep(0.01)
            gone["flag"] = True  # the first queued client disconnects while it waits
            model.gate.set()
            await blocker
            assert (await stayed)["y"][0, 0] == 6.0
            with pytest.raises(ClientGone):
                await left
            await batcher.close()

    run(scenario())
    assert model.calls == [1, 1]  # the blocker and the one that stayed; never the one that left


class TwoOutputs(Model):
    """Gives 'y' (x * 2) and 'z' (x + 1), only those asked for; records each batch's
    rows and names."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, tuple[str, ...]]] = []

    def predict(self, inputs: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        self.started.set()
        self.gate.wait(timeout=10)
        x = inputs["x"]
        self.batches.append((x.shape[0], tuple(names)))
        every = {"y": x * 2, "z": x + 1}
        return {name: every[name] for name in names}


def test_requests_asking_for_different_outputs_never_share_a_batch() -> None:
    model = TwoOutputs()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, max_batch_size=16)
            model.gate.clear()
            first = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            wants = [("y",), ("z",), ("y",), ("y", "z"), ("z",)]
            queued = [
                asyncio.ensure_future(batcher.submit(_rows(float(i)), names))
                for i, names in enumerate(wants, start=2)
            ]
            await asyncio.sleep(0)
            model.gate.set()
            await first
            for value, (names, future) in enumerate(zip(wants, queued, strict=True), start=2):
                result = await future
                assert tuple(result) == names
                if "y" in names:
                    np.testing.assert_array_equal(result["y"], np.full((1, 2), value * 2.0))
                if "z" in names:
                    np.testing.assert_array_equal(result["z"], np.full((1, 2), value + 1.0))
            await batcher.close()

    run(scenario())
    assert model.batches[0] == (1, ("y",))
    assert sorted(model.batches[1:]) == [(1, ("y", "z")), (2, ("y",)), (2, ("z",))]


def _burst_batches(max_delay_ms: float, spacing_s: float) -> list[int]:
    """Rows per batch for a busy model that then gets 6 requests, one every
    ``spacing_s`` (concurrent traffic: the delay applies)."""
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool, max_batch_size=16, max_delay_ms=max_delay_ms)
            model.gate.clear()
            warm = [asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",))) for _ in range(3)]
            await asyncio.to_thread(model.started.wait, 5)
            model.gate.set()
            await asyncio.gather(*warm)  # the last batch held several requests: traffic
            model.calls.clear()
            futures = []
            for _ in range(6):
                futures.append(asyncio.ensure_future(batcher.submit(_rows(2.0), ("y",))))
                await asyncio.sleep(spacing_s)
            await asyncio.gather(*futures)
            await batcher.close()

    run(scenario())
    return model.calls


def test_max_delay_waits_for_more_rows_only_up_to_the_delay() -> None:
    # 6 requests 10 ms apart: a 200 ms delay gathers them into one batch...
    assert _burst_batches(200.0, 0.01) == [6]
    # ...with no delay each runs as soon as the model is free
    assert len(_burst_batches(0.0, 0.01)) >= 5
    # ...and a 5 ms delay never holds a request for the next one 30 ms later
    assert _burst_batches(5.0, 0.03) == [1] * 6


def test_a_request_past_its_deadline_fails_and_its_queued_work_is_withdrawn() -> None:
    """The running request's result is dropped at its deadline; the queued one is
    taken out of the queue, never run; one without a deadline still gets its answer."""
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool)
            model.gate.clear()
            running = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",), None, 0.05))
            await asyncio.to_thread(model.started.wait, 5)
            queued = asyncio.ensure_future(batcher.submit(_rows(2.0, width=3), ("y",), None, 0.05))
            patient = asyncio.ensure_future(batcher.submit(_rows(4.0, rows=2), ("y",)))
            for timed in (running, queued):
                with pytest.raises(TimeoutError):
                    await timed
            assert batcher.queue_depth == 1  # only the request without a deadline waits
            model.gate.set()
            result = await patient
            np.testing.assert_array_equal(result["y"], np.full((2, 2), 8.0))
            await batcher.close()

    run(scenario())
    assert model.calls == [1, 2]  # the withdrawn 1x3 request never ran


class Stoppable(Model):
    """Like Model, and its run in progress can be stopped (as onnxruntime's is)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0
        self.interrupts = 0
        self.stopped = False

    def predict(self, inputs: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        self.runs += 1
        self.stopped = False  # each run can be stopped afresh (onnxruntime: new run options)
        self.started.set()
        self.gate.wait(timeout=10)
        if self.stopped:
            raise RuntimeError("terminated")
        return {"y": inputs["x"] * 2}

    def interrupt(self) -> bool:
        self.interrupts += 1
        self.stopped = True
        self.gate.set()
        return True


class Observer:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.interrupts = 0

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batches.append(rows)

    def observe_interrupt(self) -> None:
        self.interrupts += 1


def _stoppable(model: Stoppable, pool: ThreadPoolExecutor, observer: Observer) -> Batcher:
    return Batcher(
        "m",
        model.predict,
        pool,
        batchable=True,
        max_batch_size=8,
        max_delay_ms=0.0,
        max_queue=16,
        observer=observer,
        interrupt=model.interrupt,
    )


def test_a_running_batch_that_every_request_gave_up_is_stopped_and_not_retried() -> None:
    """Both requests of the batch pass their deadline while it runs: the run is
    stopped (once), counted, and not retried one request at a time."""
    model, observer = Stoppable(), Observer()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _stoppable(model, pool, observer)
            model.gate.clear()
            both = [
                asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",), None, 0.05)),
                asyncio.ensure_future(batcher.submit(_rows(2.0), ("y",), None, 0.1)),
            ]
            for timed in both:
                with pytest.raises(TimeoutError):
                    await timed
            answer = await batcher.submit(_rows(3.0), ("y",))  # the model serves on
            np.testing.assert_array_equal(answer["y"], np.full((1, 2), 6.0))
            await batcher.close()

    run(scenario())
    assert model.interrupts == 1 and observer.interrupts == 1
    assert observer.batches == [1]  # the stopped batch observed nothing
    assert model.runs == 2  # the stopped batch of two, then the third request: no retries


def test_a_running_batch_with_one_request_still_waiting_runs_to_its_end() -> None:
    model, observer = Stoppable(), Observer()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _stoppable(model, pool, observer)
            model.gate.clear()
            hasty = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",), None, 0.05))
            patient = asyncio.ensure_future(batcher.submit(_rows(2.0), ("y",)))
            with pytest.raises(TimeoutError):
                await hasty
            assert model.interrupts == 0
            model.gate.set()
            np.testing.assert_array_equal((await patient)["y"], np.full((1, 2), 4.0))
            await batcher.close()

    run(scenario())
    assert model.runs == 1 and observer.batches == [2] and observer.interrupts == 0


def test_a_client_that_leaves_its_running_request_stops_the_run() -> None:
    """A cancelled request (the client went away) is given up like a late one."""
    model, observer = Stoppable(), Observer()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _stoppable(model, pool, observer)
            model.gate.clear()
            leaving = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            await batcher.close()

    run(scenario())
    assert model.interrupts == 1 and observer.interrupts == 1 and model.runs == 1


def test_a_request_in_a_running_batch_when_the_model_unloads_is_answered_503() -> None:
    """The soak found it: an unload under a running batch handed its requests the
    batcher's own cancellation, which reached the client as a bare 500."""
    model = Model()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = _batcher(model, pool)
            model.gate.clear()
            running = asyncio.ensure_future(batcher.submit(_rows(1.0), ("y",)))
            await asyncio.to_thread(model.started.wait, 5)
            queued = asyncio.ensure_future(batcher.submit(_rows(2.0), ("y",)))
            await asyncio.sleep(0)
            await batcher.close()
            model.gate.set()
            for request in (running, queued):
                with pytest.raises(Overloaded, match="model 'm' is unloading"):
                    await request

    run(scenario())
