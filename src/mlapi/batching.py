"""One batcher per model version: requests queue (bounded), and whenever the
model's worker thread is free, everything waiting that fits in ``max_batch_size``
rows runs as one batch and is split back. An idle server therefore sends a lone
request at once; under load, requests that arrive while a batch runs ride on the
next one. ``max_delay_ms`` adds a short wait for more rows, but only while the
model is seeing concurrent traffic, so it never taxes the idle case.

Requests are batched together only when they can be stacked: same requested
outputs, same trailing dimensions and dtypes. A batch that fails is retried one
request at a time, so one bad request cannot fail its neighbours.

A request given up (its deadline passed, or its client left) is dropped from the
queue at once; when every request of the batch that is running has been given up,
the run itself is stopped where the runtime allows it (onnxruntime: ONNX and text
models) and nothing of it is retried."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mlapi.errors import ClientGone, Overloaded

Predict = Callable[[dict[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]


class BatchObserver(Protocol):
    """Where a batcher reports what it does (metrics)."""

    def observe_batch(self, rows: int, seconds: float) -> None: ...

    def observe_interrupt(self) -> None: ...


Gone = Callable[[], bool]  # True once the client that sent a request has disconnected


class QueuedTooLong(TimeoutError):
    """A request's deadline passed while it still waited in the queue (withdrawn
    unrun); a plain TimeoutError means it passed while its batch ran."""


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)
    gone: Gone | None = None
    # set on the event loop when nobody waits for the answer any more; read by the
    # worker thread (a plain attribute: the future itself is the loop's alone)
    given_up: bool = False

    def abandoned(self) -> bool:
        """Nobody waits for this answer any more: drop it instead of running it."""
        if self.future.done():
            self.given_up = True
            return True
        if self.gone is not None and self.gone():
            self.future.set_exception(ClientGone())
            self.given_up = True
            return True
        return False


class Batcher:
    """Runs ``predict`` on one worker thread, batching compatible requests."""

    def __init__(
        self,
        name: str,
        predict: Predict,
        executor: ThreadPoolExecutor,
        *,
        batchable: bool,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self._observer = observer
        self._interrupt = interrupt
        self._running: list[_Pending] = []  # the batch on the worker thread now
        self._predict = predict
        self._executor = executor
        self._batchable = batchable and max_batch_size > 1
        self._max_rows = max_batch_size
        self._max_delay_s = max_delay_ms / 1000.0
        self._max_queue = max_queue
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_batch_requests = 0
        # (rows, seconds) of each run, on the worker thread, while a shadow compares
        self.cost: Callable[[int, float], None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def admit(self) -> None:
        """Raise Overloaded when the queue is full: called before a request's body is
        read and parsed, so shedding load costs as little as possible."""
        if len(self._queue) >= self._max_queue:
            raise Overloaded(
                f"model '{self.name}' has {len(self._queue)} requests queued; retry shortly"
            )

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        output_names: tuple[str, ...],
        gone: Gone | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The outputs of one request; TimeoutError after ``timeout_s`` (queued work
        is withdrawn, a running batch's result for it is dropped). The deadline is
        one loop timer, armed and cancelled: an ``asyncio.timeout`` block per
        request cost 6% of the server's CPU under load."""
        self.admit()
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name=f"batcher-{self.name}")
        rows, key = self._shape_key(inputs, output_names)
        pending = _Pending(inputs, output_names, rows, key, loop.create_future(), gone)
        self._queue.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        timer = None if timeout_s is None else loop.call_later(timeout_s, self._expire, pending)
        try:
            return await pending.future
        except asyncio.CancelledError:
            # the client went away: drop the work if it has not started
            self._withdraw(pending)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, pending: _Pending) -> None:
        if not pending.future.done():
            queued = pending in self._queue
            pending.future.set_exception(QueuedTooLong() if queued else TimeoutError())
            self._withdraw(pending)

    def _withdraw(self, pending: _Pending) -> None:
        pending.given_up = True
        if pending in self._queue:
            self._queue.remove(pending)
        elif pending in self._running and all(p.given_up for p in self._running):
            self._stop_running()

    def _stop_running(self) -> None:
        """Every request of the running batch is given up: stop its run (once)."""
        if self._interrupt is not None and self._interrupt() and self._observer is not None:
            self._observer.observe_interrupt()
        self._running = []

    def _shape_key(
        self, inputs: dict[str, np.ndarray], output_names: tuple[str, ...]
    ) -> tuple[int, tuple[object, ...]]:
        if not self._batchable:
            return 0, ()
        rows = -1
        parts: list[object] = [output_names]
        for name, array in inputs.items():
            if array.ndim == 0 or (rows != -1 and array.shape[0] != rows):
                return 0, ()
            rows = array.shape[0]
            parts.append((name, array.shape[1:], array.dtype.str))
        return max(rows, 0), tuple(parts)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._max_delay_s and self._last_batch_requests > 1:
                await self._gather_more()
            batch = self._take()
            if not batch:
                continue
            self._last_batch_requests = len(batch)
            self._running = batch
            try:
                results = await loop.run_in_executor(self._executor, self._execute, batch)
            except BaseException as exc:  # the executor itself failed or we are cancelled
                self._running = []
                closing = isinstance(exc, asyncio.CancelledError)
                for pending in batch:
                    if not pending.future.done():
                        # closed under a running batch (an unload): its requests are
                        # answered 503 as the queued ones are, never handed the
                        # batcher's own cancellation (the front would see its
                        # request cancelled, and the client a bare 500)
                        pending.future.set_exception(self._unloading() if closing else exc)
                if closing:
                    raise
                continue
            self._running = []
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    async def _gather_more(self) -> None:
        deadline = time.monotonic() + self._max_delay_s
        while sum(p.rows for p in self._queue) < self._max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            assert self._wakeup is not None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        """The next batch: the oldest live request and what stacks with it. Requests
        whose client has gone are dropped here, before they cost any work."""
        while self._queue and self._queue[0].abandoned():
            self._queue.popleft()
        if not self._queue:
            return []
        first = self._queue.popleft()
        batch = [first]
        if not first.key:
            return batch
        rows = first.rows
        skipped: list[_Pending] = []
        while self._queue and rows < self._max_rows:
            candidate = self._queue.popleft()
            if candidate.abandoned():
                continue
            if candidate.key == first.key and rows + candidate.rows <= self._max_rows:
                batch.append(candidate)
                rows += candidate.rows
            else:
                skipped.append(candidate)
                if len(skipped) > 8:  # keep order fair: stop looking far ahead
                    break
        self._queue.extendleft(reversed(skipped))
        return batch

    def _execute(self, batch: list[_Pending]) -> list[dict[str, np.ndarray] | BaseException]:
        """On the worker thread: run the batch, split it back per request."""
        if len(batch) == 1:
            return [self._one(batch[0])]
        names = batch[0].output_names
        stacked = {
            name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs
        }
        total = sum(p.rows for p in batch)
        try:
            outputs = self._timed(stacked, names, total)
            if any(out.ndim == 0 or out.shape[0] != total for out in outputs.values()):
                raise ValueError("outputs do not follow the batch dimension")
        except Exception as exc:
            if all(p.given_up for p in batch):
                return [exc for _ in batch]  # stopped, or failed for nobody: no retry
            return [self._one(p) for p in batch]  # isolate the request that fails
        results: list[dict[str, np.ndarray] | BaseException] = []
        start = 0
        for pending in batch:
            end = start + pending.rows
            results.append({name: out[start:end] for name, out in outputs.items()})
            start = end
        return results

    def _one(self, pending: _Pending) -> dict[str, np.ndarray] | BaseException:
        if pending.given_up:
            return TimeoutError()  # nobody waits: its answer would be dropped
        try:
            return self._timed(pending.inputs, pending.output_names, max(pending.rows, 1))
        except BaseException as exc:
            return exc

    def _timed(
        self, inputs: dict[str, np.ndarray], names: Sequence[str], rows: int
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self._predict(inputs, names)
        seconds = time.perf_counter() - started
        if self._observer is not None:
            self._observer.observe_batch(rows, seconds)
        if self.cost is not None:
            self.cost(rows, seconds)
        return outputs

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(self._unloading())
        self._queue.clear()

    def _unloading(self) -> Overloaded:
        return Overloaded(f"model '{self.name}' is unloading")
