"""The supervisor's stop (supervisor._stop_all) with real spawned processes: a worker
that stops when told is a clean stop, as is one still starting that the SIGTERM
kills (it held nothing; the process tier under a busy machine caught a server
exiting 1 for it); one that fails, or must be killed, is not."""

from __future__ import annotations

import multiprocessing
import time

from mlapi import supervisor
from mlapi.settings import load_settings


def sleeps() -> None:  # no handler installed: the default SIGTERM kills it
    time.sleep(60)


def fails() -> None:
    raise SystemExit(3)


def test_a_worker_killed_by_the_stop_s_sigterm_is_a_clean_stop() -> None:
    context = multiprocessing.get_context("spawn")
    settings = load_settings(env_file=None)
    starting = context.Process(target=sleeps)
    starting.start()
    assert supervisor._stop_all([starting], settings, failed=False) == 0
    assert starting.exitcode == -15
    failing = context.Process(target=fails)
    failing.start()
    failing.join(30)
    assert supervisor._stop_all([failing], settings, failed=False) == 1
    assert supervisor._stop_all([], settings, failed=True) == 1
