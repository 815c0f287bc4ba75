"""What the registry's parts share: the records of this process's models, loading
versions on threads (at most ``load_concurrency`` at once, so the event loop keeps
answering health checks), and retiring the ones that leave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mlapi.errors import InsufficientMemory, MlapiError, without_host_paths
from mlapi.observability.metrics import Metrics
from mlapi.registry.loading import Loader, settle_garbage_collector
from mlapi.registry.versions import ModelRecord, ModelVersion, Residence, State
from mlapi.repository import scan as repo_scan
from mlapi.settings import Settings, available_cpus

log = logging.getLogger("mlapi.registry")
ROLLOUT_OUTCOMES = ("promoted", "failed", "refused", "rolled_back")


class RegistryCore:
    """The state the registry and its rollouts share, and what both do with it."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.records: dict[str, ModelRecord] = {}
        self._load_slots = asyncio.Semaphore(settings.load_concurrency)
        self._model_locks: dict[str, asyncio.Lock] = {}
        self.retiring: set[asyncio.Task[None]] = set()
        self.scan_error: str | None = None
        # look at one model's folder again now (ModelRegistry.load with changed_only)
        self.reload: Callable[[str], Awaitable[object]] | None = None
        threads = settings.intra_op_threads
        if not threads:
            threads = max(1, int(available_cpus() // settings.workers))
        self.intra_op_threads = threads
        self.loader = Loader(settings, self.metrics, threads)
        from mlapi.registry.cache import Cache  # the cache works on this core

        self.cache = Cache(self)

    def retire(self, versions: object) -> None:
        """Let each version answer what it holds, then free it, in the background."""
        grace_s = self.settings.request_timeout_s + self.settings.body_timeout_s
        for version in list(versions):  # type: ignore[call-overload]
            task = asyncio.create_task(self._retire_one(version, grace_s))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)

    async def _retire_one(self, version: ModelVersion, grace_s: float) -> None:
        await version.retire(grace_s)
        self.loader.publish_state(version)
        log.info("model %s v%d unloaded", version.name, version.version)
        settle_garbage_collector()

    def count(self, name: str, outcome: str) -> None:
        self.metrics.rollouts.labels(name, outcome).inc()

    def count_loads(self, record: ModelRecord, versions: list[ModelVersion], reason: str) -> None:
        """mlapi_model_loads_total, when some of ``versions`` loaded (for ``reason``:
        start, demand or rollout); an on-demand model's cache counts it resident."""
        if any(v.state is State.READY for v in versions):
            if record.cache is not None:
                self.cache.resident(record, versions, reason)
            else:
                self.metrics.model_loads.labels(record.name, reason).inc()

    def publish_serving(self, record: ModelRecord) -> None:
        ready = [v.version for v in record.versions.values() if v.state is State.READY]
        self.metrics.serving_version.labels(record.name).set(max(ready, default=0))

    def lock(self, name: str) -> asyncio.Lock:
        return self._model_locks.setdefault(name, asyncio.Lock())

    def record_for(self, entry: repo_scan.ModelEntry, quiet: bool = False) -> ModelRecord:
        model_error = without_host_paths(entry.error, entry.path) if entry.error else None
        record = ModelRecord(entry.name, error=model_error)
        record.cache = self.residence_for(entry)
        for outcome in ROLLOUT_OUTCOMES:  # every outcome is exposed, from 0
            self.metrics.rollouts.labels(entry.name, outcome)
        if not quiet:
            for note in entry.notes:
                log.warning("model %s: %s", entry.name, note)
        for item in entry.versions:
            version = self._version_of(item, record.cache is not None)
            if item.error:
                version.fail(without_host_paths(item.error, item.path))
            record.versions[item.version] = version
        if entry.trial is not None:
            record.trial = self._version_of(entry.trial, record.cache is not None)
        record.refused = dict(entry.refused)
        if model_error and not quiet:
            log.error("model %s cannot be served: %s", entry.name, model_error)
        return record

    def residence_for(self, entry: repo_scan.ModelEntry) -> Residence | None:
        """A Residence when the model loads on demand (its model.toml's ``load``, else
        MLAPI_MODEL_LOADING), with its cache settings; None for an eager model."""
        configs = [item.config for item in entry.versions if item.config is not None]
        modes = [config.load for config in configs if config.load is not None]
        if (modes[-1] if modes else self.settings.model_loading) != "on_demand":
            return None
        settings = self.settings
        own = configs[-1].on_demand if configs else None
        return Residence(
            pin=bool(own and own.pin),
            min_resident_s=(
                own.min_resident_s
                if own is not None and own.min_resident_s is not None
                else settings.min_resident_s
            ),
            idle_unload_s=(
                own.idle_unload_s
                if own is not None and own.idle_unload_s is not None
                else settings.idle_unload_s
            ),
        )

    def _version_of(self, item: repo_scan.VersionEntry, on_demand: bool = False) -> ModelVersion:
        return ModelVersion(
            item.name,
            item.version,
            item.path,
            item.config,
            timeout_s=self.settings.request_timeout_s,
            fingerprint=item.fingerprint,
            on_demand=on_demand,
        )

    async def load_versions(self, versions: list[ModelVersion], reserved: int = 0) -> None:
        await asyncio.gather(
            *(self._load_one(v, reserved) for v in versions if v.state is State.LOADING)
        )

    async def _load_one(self, version: ModelVersion, reserved: int = 0) -> None:
        async with self._load_slots:
            try:
                await asyncio.to_thread(self.loader.load_and_warm, version, reserved)
            except MlapiError as exc:
                version.fail(
                    without_host_paths(exc.message, version.path),
                    refused=isinstance(exc, InsufficientMemory),
                )
            except Exception as exc:  # a runtime bug must not kill the other models
                version.fail(f"unexpected {type(exc).__name__} while loading")
                log.exception("model %s v%d: unexpected error", version.name, version.version)
        if version.state is State.FAILED and version.on_demand and version.refused:
            # the cache makes room and tries again, or the request gets a 507: routine
            log.info(
                "model %s v%d not loaded now: %s", version.name, version.version, version.reason
            )
            version.close()
        elif version.state is State.FAILED:
            log.error("model %s v%d FAILED: %s", version.name, version.version, version.reason)
            version.close()
        elif version.state is State.UNAVAILABLE:
            log.info("model %s v%d was unloaded while it loaded", version.name, version.version)
        else:
            log.info(
                "model %s v%d READY (%s, load %.3fs, warm-up %.3fs)",
                version.name,
                version.version,
                version.runtime_name,
                version.load_seconds or 0.0,
                version.warmup_seconds or 0.0,
            )
