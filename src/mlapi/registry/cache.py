"""On-demand models (``load = "on_demand"``): each worker keeps a cache of them under
its share of the memory budget (registry.memory). A cold model's first request
loads it and waits; the requests that come while it loads wait for the same load.
When a load would not fit, the least recently used on-demand models that are idle
(no request in flight or queued, no rollout or trial running, loaded at least
``min_resident_s`` ago, not pinned) are evicted first, one at a time, each one's
memory handed back to the kernel before the next look. An idle one is also
evicted after ``idle_unload_s`` with no request. Eager models are never evicted.

An evicted model's versions go back to LOADABLE; its next request loads the
newest version its folder holds then (the repository poll keeps the LOADABLE
record in step with the folder, without loading it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mlapi.errors import InsufficientMemory, NotFound, without_host_paths
from mlapi.registry.memory import give_back_freed
from mlapi.registry.versions import ModelRecord, ModelVersion, State

if TYPE_CHECKING:
    from mlapi.registry.core import RegistryCore

log = logging.getLogger("mlapi.registry")
StartTrial = Callable[[ModelRecord], Awaitable[None]]


class Cache:
    """This worker's on-demand models: loads that requests share, and evictions."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core
        self.loading: dict[str, asyncio.Task[None]] = {}
        self.reserved = 0  # bytes the loads under way here will take
        # a load whose need is only estimated (never measured here) runs alone, so an
        # estimate that is short is not made worse by other loads beside it
        self._running = 0
        self._alone = False
        self._queued_alone = 0  # loads waiting to run alone: the others wait behind them
        self._gate = asyncio.Condition()

    def records(self) -> list[ModelRecord]:
        return [r for r in self.core.records.values() if r.cache is not None and not r.unloaded]

    # ----- loading on demand -----------------------------------------------------
    def demand(self, record: ModelRecord, start_trial: StartTrial) -> asyncio.Future[None]:
        """The load of ``record`` that its waiting requests share (one per model at a
        time); shielded, so a request that gives up does not stop it for the others."""
        task = self.loading.get(record.name)
        if task is None:
            task = asyncio.create_task(
                self._load(record, start_trial), name=f"mlapi-demand-{record.name}"
            )
            self.loading[record.name] = task
            task.add_done_callback(self._loaded)
        return asyncio.shield(task)

    def _loaded(self, task: asyncio.Task[None]) -> None:
        for name, running in list(self.loading.items()):
            if running is task:
                del self.loading[name]
        if not task.cancelled():
            task.exception()  # read here: every waiter may have given up on it

    async def _load(self, record: ModelRecord, start_trial: StartTrial) -> None:
        core = self.core
        cache = record.cache
        assert cache is not None
        while cache.draining and cache.loaded_at:  # it goes first, then loads again
            if not self.core.lock(record.name).locked() and not any(
                v.busy() for v in record.versions.values()
            ):
                await self.evict(record, "memory")
                break
            await asyncio.sleep(0.02)
        async with core.lock(record.name):
            if record.unloaded or core.records.get(record.name) is not record:
                raise NotFound(f"unknown model '{record.name}'")
            versions = [v for v in record.versions.values() if v.state is State.LOADABLE]
            if record.serves() or not versions:
                return  # loaded meanwhile, or failed (its request is told why)
            sized = [await asyncio.to_thread(core.loader.need, v) for v in versions]
            need = sum(size for size, _ in sized)
            # never measured here: alone, so that a short estimate is not made worse
            alone = any(source.startswith("estimated") for _, source in sized)
            deadline = time.monotonic() + core.settings.request_timeout_s
            while True:
                await self._enter(alone)
                try:
                    room = await self._load_once(record, versions, need)
                finally:
                    await self._leave()
                refused = [v for v in versions if v.state is State.FAILED and v.refused]
                for version in refused:  # may fit later: loadable again
                    record.versions[version.version] = version.loadable_copy()
                    core.loader.publish_state(record.versions[version.version])
                if record.serves() or not refused or not room or time.monotonic() > deadline:
                    break
                # there was room, and then not: other loads, or requests' own memory,
                # grew meanwhile. Again, alone, with room made against what is there then
                versions = [record.versions[v.version] for v in versions]
                alone = True
                await asyncio.sleep(0.05)
            if record.serves():
                self.resident(record, versions, "demand")
                record.trial, cache.pending_trial = cache.pending_trial, None
                await start_trial(record)
            elif refused:  # this request a 507
                raise InsufficientMemory(refused[0].reason or "not enough memory")

    async def _load_once(
        self, record: ModelRecord, versions: list[ModelVersion], need: int
    ) -> bool:
        """Make room for ``need`` bytes, reserve them and load ``versions``; whether
        there was room (else its load said what is missing)."""
        room = await self.make_room(need, keep=record)
        for version in versions:
            version.state = State.LOADING
            self.core.loader.publish_state(version)
        self.reserved += need
        try:
            await self.core.load_versions(versions, reserved=self.reserved - need)
        finally:
            self.reserved -= need
        return room

    async def _enter(self, alone: bool) -> None:
        """Start a load: one that must run alone waits for those running to end, and
        while it waits no other starts (else under steady churn it would wait for
        ever); the others run side by side."""
        async with self._gate:
            self._queued_alone += alone
            try:
                await self._gate.wait_for(
                    lambda: (
                        not self._alone
                        and (self._running == 0 if alone else self._queued_alone == 0)
                    )
                )
            finally:
                self._queued_alone -= alone
            self._running += 1
            self._alone = alone

    async def _leave(self) -> None:
        async with self._gate:
            self._running -= 1
            self._alone = False
            self._gate.notify_all()

    def resident(self, record: ModelRecord, versions: list[ModelVersion], reason: str) -> None:
        """``versions`` of an on-demand model loaded (for ``reason``): counted."""
        cache = record.cache
        assert cache is not None
        if not cache.loaded_at:
            cache.loaded_at = time.monotonic()
        for version in versions:
            runtime = version.runtime
            if version.state is State.READY and runtime is not None:
                platform = (version.config and version.config.platform) or runtime.platform
                cache.described[version.version] = (
                    version.fingerprint,
                    runtime.signature,
                    platform,
                )
        measured = sum(v.measured for v in versions if v.state is State.READY)
        if measured:
            cache.measured = measured
        cache.loads[reason] = cache.loads.get(reason, 0) + 1
        metrics = self.core.metrics
        metrics.model_loads.labels(record.name, reason).inc()
        metrics.model_resident.labels(record.name).set(1)
        self.core.publish_serving(record)

    # ----- making room ------------------------------------------------------------
    def evictable(self, record: ModelRecord, now: float) -> bool:
        """Whether the cache may evict ``record`` now."""
        cache = record.cache
        return (
            cache is not None
            and cache.loaded_at > 0
            and not cache.pin
            and now - cache.loaded_at >= cache.min_resident_s
            and record.trial is None
            and not record.previous
            and record.name not in self.loading
            and not self.core.lock(record.name).locked()
            and not any(v.busy() for v in record.versions.values())
            and not any(v.state is State.LOADING for v in record.candidates.values())
        )

    def victims(self, keep: ModelRecord | None = None) -> list[ModelRecord]:
        """The models that may go, least recently used first."""
        now = time.monotonic()
        found = [r for r in self.records() if r is not keep and self.evictable(r, now)]
        return sorted(found, key=lambda r: r.cache.last_used if r.cache else 0.0)

    async def make_room(self, need: int, keep: ModelRecord | None = None) -> bool:
        """Evict idle models, least recently used first, until ``need`` bytes fit in
        this worker's share. While none may go now but one will within a request's
        time (its requests are answered, its ``min_resident_s`` runs out), it waits for
        that one: a busy cache makes a cold request slower, not failed. When none
        will, the load's own check says what is missing (507 with both numbers).
        Whether it fits."""
        budget = self.core.loader.budget
        deadline = time.monotonic() + self.core.settings.request_timeout_s
        while not budget.fits_share(need, self.reserved):
            victims = self.victims(keep)
            if victims:
                await self.evict(victims[0], "memory")
                continue
            now = time.monotonic()
            soon = [r for r in self.records() if r is not keep and self._soon(r, deadline)]
            if now >= deadline or not (soon or self.reserved):  # others' loads end soon too
                # last: what was freed and not handed back yet (a collection, a trim)
                await asyncio.to_thread(give_back_freed)
                return budget.fits_share(need, self.reserved)
            self._drain(soon, now)
            await asyncio.sleep(0.02)
        return True

    def _drain(self, soon: list[ModelRecord], now: float) -> None:
        """A model in constant use would never be idle: the least recently used one
        that is past its ``min_resident_s`` takes no new request (they wait for its
        next load, as for a cold model) until those it holds are answered; then it
        goes. One at a time."""
        if any(r.cache is not None and r.cache.draining for r in self.records()):
            return
        ripe = [
            r
            for r in soon
            if r.cache is not None and now - r.cache.loaded_at >= r.cache.min_resident_s
        ]
        if ripe:
            victim = min(ripe, key=lambda r: r.cache.last_used if r.cache else 0.0)
            assert victim.cache is not None
            victim.cache.draining = True
            log.info("model %s drains: no new request until it is evicted", victim.name)

    def _soon(self, record: ModelRecord, deadline: float) -> bool:
        """Whether ``record``, resident and not evictable now, may become so before
        ``deadline``: in use, or loaded too recently, but neither pinned nor held by a
        rollout (a bake or a trial lasts longer than a request waits)."""
        cache = record.cache
        return (
            cache is not None
            and cache.loaded_at > 0
            and not cache.pin
            and record.trial is None
            and not record.previous
            and cache.loaded_at + cache.min_resident_s < deadline
        )

    async def evict(self, record: ModelRecord, reason: str) -> None:
        """Unload every version of ``record`` now; they go back to LOADABLE. The caller
        saw it evictable: nothing between that look and the swap below yields, so no
        request can have taken hold of it meanwhile."""
        cache = record.cache
        assert cache is not None
        core = self.core
        async with core.lock(record.name):  # free (evictable said so): taken at once
            if not cache.loaded_at:  # a drained one, evicted by its own waiters meanwhile
                return
            old = list(record.versions.values())
            record.versions = {v.version: v.loadable_copy() for v in old}
            cache.loaded_at = 0.0
            cache.draining = False  # its waiting requests load it again
            cache.evictions[reason] = cache.evictions.get(reason, 0) + 1
            core.metrics.model_evictions.labels(record.name, reason).inc()
            core.metrics.model_resident.labels(record.name).set(0)
            core.publish_serving(record)
            for version in old:
                version.withdraw()
                await version.aclose()
                version.state = State.UNAVAILABLE
            await asyncio.to_thread(give_back_freed)
            for version in record.versions.values():
                core.loader.publish_state(version)
        log.info(
            "model %s evicted (%s); %d load(s), %d eviction(s) so far",
            record.name,
            reason,
            sum(cache.loads.values()),
            sum(cache.evictions.values()),
        )

    async def unload_idle(self) -> None:
        """Evict the on-demand models idle for longer than their ``idle_unload_s``."""
        now = time.monotonic()
        for record in self.records():
            cache = record.cache
            if (
                cache is not None
                and cache.idle_unload_s > 0
                and now - max(cache.last_used, cache.loaded_at) >= cache.idle_unload_s
                and self.evictable(record, now)
            ):
                await self.evict(record, "idle")

    async def tend(self, interval_s: float = 1.0) -> None:
        """Look for idle models every ``interval_s``."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.unload_idle()
            except Exception:  # a look must never stop the looking
                log.exception("idle unload failed")

    # ----- checking without loading -----------------------------------------------
    async def check(self, versions: list[ModelVersion]) -> None:
        """LOADING on-demand versions become LOADABLE when their files verify and
        their need fits in a worker's share on its own (every evictable model
        evicted); else FAILED with the reason (refused: too big on its own)."""
        evictable = sum(
            r.cache.measured for r in self.records() if r.cache is not None and not r.cache.pin
        )
        for version in versions:
            if version.state is not State.LOADING:
                continue
            try:
                await asyncio.to_thread(self.core.loader.check_loadable, version, evictable)
            except InsufficientMemory as exc:
                version.fail(without_host_paths(exc.message, version.path), refused=True)
            except Exception as exc:
                message = getattr(exc, "message", None) or f"unexpected {type(exc).__name__}"
                version.fail(without_host_paths(message, version.path))
            else:
                version.state = State.LOADABLE
            self.core.loader.publish_state(version)
            if version.state is State.FAILED:
                log.error(
                    "model %s v%d cannot be loaded on demand: %s",
                    version.name,
                    version.version,
                    version.reason,
                )
