"""One thread for the large conversions of request and response bodies: inflating,
decoding and encoding. They hold the GIL for long calls (orjson, numpy), so running
several at once is no faster; and with many threads waiting for the GIL the event
loop could lose it to each in turn. On one lane, the event loop waits for at most
one such call at a time (a 33 MB JSON body: about 0.3 s), and health checks and
small requests keep being answered."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlapi.errors import MlapiError

T = TypeVar("T")
OFFLOAD_BYTES = 256 * 1024  # below this, converting inline costs less than the hop
_LANE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlapi-convert")


class _Raised:
    """An exception from the lane, carried back as a value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def off_loop(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` on the lane. Its exception comes back as a value and is
    raised here: raised by the future instead, it would sit in a reference cycle
    (the future, its exception, the traceback's frame of ``Future.result``) with
    everything the call's frames held, such as a refused request's parsed message,
    until a full garbage collection."""
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(_LANE, _without_gc, func, *args)
    if isinstance(result, _Raised):
        error, args = result.error, ()  # this frame keeps nothing large
        del result
        try:
            raise error
        finally:
            del error
    return result


def _without_gc(func: Callable[..., T], *args: Any) -> T:
    """A large conversion makes millions of objects and no cycles: the cyclic
    collector would scan them again and again (3x the time of a nested JSON
    parse), all of it holding the GIL the event loop waits for. After it, the lane
    steps aside for a tenth of the time it took, so that the event loop gets more
    than a switch interval to answer what waited meanwhile before the next one."""
    started = time.perf_counter()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return func(*args)
    except MlapiError as exc:  # the client's error: its frames (and their data) go now
        return _Raised(exc.with_traceback(None))  # type: ignore[return-value]
    except Exception as exc:  # a bug: its traceback is logged
        return _Raised(exc)  # type: ignore[return-value]
    finally:
        if enabled:
            gc.enable()
        time.sleep(min(0.05, (time.perf_counter() - started) / 10))
