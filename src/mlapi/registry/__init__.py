"""The models this process serves. ``versions`` holds a model's versions and their
states, ``loading`` how one version is verified, loaded and warmed up, ``core``
the records and loading threads, ``rollout`` how a model moves between versions;
this module is what the API sees: which version serves, and the model life cycle.
A rollout:

    scan -> candidates (new or changed versions) -> verify, load, warm (beside the
    versions that serve, which keep answering) -> switch the READY ones in -> retire
    what they replace once the requests it holds are answered.

A candidate that fails changes nothing for clients; it is shown in the repository
index and not tried again until its files change. Polling the repository
(``MLAPI_REPOSITORY_POLL_S``) and the load API enter the same flow. One model
failing never touches the others. Loading runs on threads, at most
``load_concurrency`` at once, so the event loop keeps answering health checks."""

from __future__ import annotations

import asyncio
import contextlib
import time

from mlapi.errors import GatewayTimeout, MlapiError, NotFound
from mlapi.observability.metrics import Metrics
from mlapi.registry.core import RegistryCore, log
from mlapi.registry.loading import settle_garbage_collector
from mlapi.registry.rollout import Rollouts
from mlapi.registry.versions import Cold, ModelRecord, ModelVersion, State
from mlapi.repository import scan as repo_scan
from mlapi.settings import Settings
from mlapi.tensors import Signature

__all__ = ["Cold", "ModelRecord", "ModelRegistry", "ModelVersion", "State"]


class ModelRegistry:
    """The models this process serves: a shared core (records, loading, retiring)
    and the rollouts that move each model's versions, held, not inherited."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._core = RegistryCore(settings, metrics)
        self._rollouts = Rollouts(self._core)
        self._core.reload = lambda name: self.load(name, changed_only=True)
        self.metrics = self._core.metrics

    @property
    def scan_error(self) -> str | None:
        return self._core.scan_error

    # ----- queries -------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The READY version to serve; NotFound for unknown names, NotReady otherwise
        (Cold, a NotReady, for an on-demand model not loaded in this worker)."""
        record = self._core.records.get(name)
        if record is None or record.unloaded:
            raise NotFound(f"unknown model '{name[:128]}'")
        return self._version_of(record, version)

    def serve(self, name: str, version: str | None = None, waited: bool = False) -> ModelVersion:
        """``get`` for a request that will run the model: an on-demand model's last
        use moves to now (its place in the cache's least-recently-used order). A
        request that ``waited`` for this model's load is served by it even when the
        model was told to drain meanwhile: it came before the drain, and the drain
        waits for it as for any request in flight."""
        record = self._core.records.get(name)
        if record is None or record.unloaded:
            raise NotFound(f"unknown model '{name[:128]}'")
        cache = record.cache
        if cache is not None:
            if cache.draining and not waited:  # to be evicted for room: wait for a load
                raise Cold(name)
            cache.used()
        return self._version_of(record, version)

    async def demand(self, name: str, version: str | None, started: float) -> ModelVersion:
        """Load a cold on-demand model for a request that began at ``started``
        (time.perf_counter()) and return the version to serve. Requests that come
        while it loads share the load; each waits until its own deadline
        (MLAPI_REQUEST_TIMEOUT_S), and the load goes on for the others."""
        settings = self._core.settings
        metrics = self._core.metrics
        while True:  # evicted before this request could hold it (rare): loaded again
            record = self.record(name)
            left = settings.request_timeout_s - (time.perf_counter() - started)
            waited = time.perf_counter()
            try:
                await asyncio.wait_for(
                    self._core.cache.demand(record, self._start_trial), max(left, 0.0)
                )
            except TimeoutError:
                raise GatewayTimeout(
                    f"model '{name}' was still loading after {settings.request_timeout_s:g}s "
                    f"(MLAPI_REQUEST_TIMEOUT_S); its load goes on: retry shortly",
                    queued=True,
                ) from None
            finally:
                metrics.cold_start.labels(name).observe(time.perf_counter() - waited)
            try:
                return self.serve(name, version, waited=True)
            except Cold:
                await asyncio.sleep(0.02)  # its load again, while this request's time lasts

    def cold_signature(
        self, name: str, version: str | None
    ) -> tuple[ModelVersion, Signature, str] | None:
        """(the version, its signature, its platform) of an on-demand model that is not
        loaded here, from what its last load here showed (same files) or from the
        inputs and outputs its model.toml declares; None when neither says."""
        record = self.record(name)
        numbers = [int(version)] if version and version.isdigit() else sorted(record.versions)
        if not numbers or numbers[-1] not in record.versions:
            return None
        cold = record.versions[numbers[-1]]
        known = record.cache.described.get(cold.version) if record.cache else None
        if known is not None and known[0] == cold.fingerprint:
            return cold, known[1], known[2]
        config = cold.config
        if config is not None and config.inputs and config.outputs:
            platform = config.platform or config.runtime or ""
            return cold, Signature(config.inputs, config.outputs), platform
        return None

    def _version_of(self, record: ModelRecord, version: str | None) -> ModelVersion:
        name = record.name
        wanted = None
        if version is not None:
            if not repo_scan.VERSION.fullmatch(version):
                raise NotFound(f"model '{name}' has no version '{version[:64]}'")
            wanted = int(version)
        return record.ready_version(wanted)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model of the repository (safe to use as a metric label)."""
        return name in self._core.records

    def record(self, name: str) -> ModelRecord:
        record = self._core.records.get(name)
        if record is None or record.unloaded:
            raise NotFound(f"unknown model '{name[:128]}'")
        return record

    def records(self) -> list[ModelRecord]:
        return [self._core.records[name] for name in sorted(self._core.records)]

    def readiness(self) -> tuple[bool, list[dict[str, object]]]:
        """(ready, details): ready only when every model that should be served is READY
        and there is at least one such model."""
        served = [r for r in self.records() if not r.unloaded]
        details = [item for r in served for item in r.describe()]
        if self.scan_error:
            return False, [{"name": "*", "state": "FAILED", "reason": self.scan_error}]
        return bool(served) and all(r.is_ready for r in served), details

    # ----- life cycle ----------------------------------------------------------
    def scan(self) -> list[repo_scan.ModelEntry]:
        """Scan MODEL_PATH and create LOADING records for what will be loaded."""
        try:
            entries = repo_scan.scan(
                self._core.settings.model_path, self._core.settings.pinned_version
            )
        except MlapiError as exc:
            self._core.scan_error = exc.message
            log.error("model repository cannot be read: %s", exc.message)
            return []
        for entry in entries:
            self._core.records[entry.name] = self._core.record_for(entry)
        return entries

    async def load_all(self) -> None:
        """Load every scanned model; returns when all have settled."""

        async def first_load(record: ModelRecord) -> None:
            if record.cache is not None:  # on demand: checked now, loaded by a request
                record.cache.pending_trial, record.trial = record.trial, None  # at its load
                await self._core.cache.check(list(record.versions.values()))
                return
            # without the model's lock: an unload meanwhile withdraws what loads
            await self._core.load_versions(list(record.versions.values()))
            self._core.count_loads(record, list(record.versions.values()), "start")
            self._core.publish_serving(record)
            await self._start_trial(record)

        await asyncio.gather(*(first_load(r) for r in self.records()))
        settle_garbage_collector()

    async def load(self, name: str, changed_only: bool = False) -> ModelRecord:
        """Roll one model forward to what its folder holds now (every version the
        policy selects is reloaded; with ``changed_only``, only those whose files
        changed). The versions that serve keep serving until their replacements are
        READY; a replacement that fails leaves them as they are."""
        model_dir = self._core.settings.model_path / name
        if not repo_scan.MODEL_NAME.fullmatch(name) or not model_dir.is_dir():
            raise NotFound(f"no model '{name[:128]}' in the model repository")
        async with self._core.lock(name):
            entry = await asyncio.to_thread(
                repo_scan.scan_model, model_dir, self._core.settings.pinned_version
            )
            old = self._core.records.get(name)
            if old is None or old.unloaded or not old.serves():
                fresh = self._core.record_for(entry, quiet=changed_only)
                if fresh.cache is not None:
                    return await self._stay_cold(old, fresh)
                await self._core.load_versions(list(fresh.versions.values()))
                self._core.count_loads(fresh, list(fresh.versions.values()), "rollout")
                self._core.records[name] = fresh
                if old is not None and not old.unloaded:
                    self._core.retire(old.versions.values())
                    self._rollouts.trials.end(old)
                self._core.publish_serving(fresh)
                await self._start_trial(fresh)
                settle_garbage_collector()
                return fresh
            await self._rollouts.roll_forward(old, entry, changed_only)
            return old

    async def _stay_cold(self, old: ModelRecord | None, fresh: ModelRecord) -> ModelRecord:
        """An on-demand model that is not loaded here: its record follows the folder
        (checked, not loaded), so that its next request loads the newest version.
        Files unchanged since the last look: nothing is checked again."""
        core = self._core
        if old is not None and not old.unloaded and old.cache is not None:
            if old.error == fresh.error and {n: v.fingerprint for n, v in old.versions.items()} == {
                n: v.fingerprint for n, v in fresh.versions.items()
            }:
                return old
            fresh.cache = old.cache  # its counts and last use carry over
        assert fresh.cache is not None
        fresh.cache.pending_trial, fresh.trial = fresh.trial, None  # started at its load
        await core.cache.check(list(fresh.versions.values()))
        core.records[fresh.name] = fresh
        if old is not None and not old.unloaded:
            core.retire(old.versions.values())
            self._rollouts.trials.end(old)
        core.publish_serving(fresh)
        return fresh

    async def tend(self) -> None:
        """Evict the on-demand models idle past their ``idle_unload_s`` (a task)."""
        await self._core.cache.tend()

    async def _start_trial(self, record: ModelRecord) -> None:
        """Load the trial the scan named beside what now serves, and start its gate."""
        wanted, record.trial = record.trial, None
        await self._rollouts.trials.update(record, wanted, record.refused)

    async def refresh(self) -> None:
        """One look at the repository: roll forward every served model whose files
        changed and load new model folders. Models unloaded through the API stay so."""
        try:
            folders = await asyncio.to_thread(
                repo_scan.model_folders, self._core.settings.model_path
            )
        except OSError as exc:
            log.warning("model repository cannot be read: %s", type(exc).__name__)
            return
        for name, has_versions in folders:
            record = self._core.records.get(name)
            if record is not None and record.unloaded:
                continue
            if record is None and not has_versions:
                continue  # not a model yet (a publish under way, or a stray folder)
            try:
                await self.load(name, changed_only=record is not None)
            except NotFound:  # removed while we looked
                continue

    async def watch(self, interval_s: float) -> None:
        """Poll the repository every ``interval_s`` (MLAPI_REPOSITORY_POLL_S)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # a poll must never stop polling
                log.exception("repository poll failed")

    async def unload(self, name: str) -> None:
        record = self.record(name)
        async with self._core.lock(name):
            record.unloaded = True
            record.retired = tuple(record.versions)
            trial = record.trial
            self._rollouts.trials.end(record)
            if trial is not None:
                trial.withdraw()
            for version in [*record.versions.values(), *record.candidates.values()]:
                version.withdraw()
            for version in list(record.versions.values()):
                await version.unload_now()
            for version in record.previous.values():
                await version.aclose()
            record.versions.clear()
            record.candidates.clear()
            record.previous.clear()
            self.metrics.serving_version.labels(name).set(0)
            if record.cache is not None:
                record.cache.loaded_at = 0.0
                self.metrics.model_resident.labels(name).set(0)
            settle_garbage_collector()

    async def close(self) -> None:
        await self._rollouts.trials.close()
        for task in list(self._core.retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for record in self.records():
            trial = record.trial
            self._rollouts.trials.end(record, retire=False)
            loaded = [*record.versions.values(), *record.candidates.values()]
            if trial is not None:
                loaded.append(trial)
            for version in [*loaded, *record.previous.values()]:
                await version.aclose()

    def publish_states(self) -> None:
        """Set mlapi_model_state, queue depth and in-flight gauges for every known
        model version (this process)."""
        for record in self._core.records.values():
            if record.unloaded:
                for number in record.retired:
                    self.metrics.set_state(record.name, str(number), "unavailable")
                continue
            trial = [record.trial] if record.trial is not None else []
            for version in [*record.versions.values(), *record.candidates.values(), *trial]:
                self._core.loader.publish_state(version)
                if version.metrics is not None:
                    queued = version.batcher.queue_depth if version.batcher else 0
                    version.metrics.publish_load(queued)
