"""WORKERS > 1: one parent holds the listening socket and keeps ``WORKERS`` server
processes on it. A worker that dies is replaced (a crash costs one worker's
in-flight requests, not the service); SIGTERM is passed on to every worker, which
drains as a single server would, and the parent exits 0 once all have stopped
cleanly. Workers are spawned, not forked: no model, thread pool or event loop of
the parent leaks into them."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from mlapi.settings import Settings

log = logging.getLogger("mlapi.supervisor")
Target = Callable[[Settings, socket.socket], None]
_QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after its start ...
_QUICK_DEATHS_MAX = 5  # ... this many times in a row means it cannot start: give up


def run_workers(settings: Settings, sock: socket.socket, target: Target) -> int:
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    workers: dict[int, tuple[BaseProcess, float]] = {}

    def start(index: int) -> None:
        process = context.Process(
            target=target, args=(settings, sock), name=f"mlapi-worker-{index}"
        )
        process.start()
        workers[index] = (process, time.monotonic())

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    quick_deaths = 0
    try:
        for index in range(settings.workers):
            start(index)
        while not stop.wait(0.5):
            for index, (process, started) in list(workers.items()):
                if process.is_alive():
                    continue
                quick_deaths = (
                    quick_deaths + 1 if time.monotonic() - started < _QUICK_DEATH_S else 0
                )
                log.error(
                    "worker %d (pid %s) exited with %s; starting another",
                    index,
                    process.pid,
                    process.exitcode,
                )
                _forget_metrics_of(process.pid)
                if quick_deaths >= _QUICK_DEATHS_MAX:
                    log.error("workers keep dying at start; stopping")
                    stop.set()
                    break
                start(index)
        return _stop_all(
            [process for process, _ in workers.values()],
            settings,
            failed=quick_deaths >= _QUICK_DEATHS_MAX,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(processes: list[BaseProcess], settings: Settings, failed: bool) -> int:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.drain_grace_s + settings.shutdown_timeout_s + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker pid %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join(5)
            failed = True
        elif process.exitcode not in (0, -signal.SIGTERM):
            # killed by the SIGTERM sent above: a worker still starting (its handler
            # not yet installed), which had accepted nothing, stops cleanly so
            failed = True
    return 1 if failed else 0


def _forget_metrics_of(pid: int | None) -> None:
    """A dead worker's live gauges must not count any more."""
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
