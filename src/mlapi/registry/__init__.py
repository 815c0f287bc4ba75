"""The models this process serves. ``versions`` holds a model's versions and their
states, ``loading`` how one version is verified, loaded and warmed up; this module
decides which versions serve, and rolls a model forward when its folder changes:

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
import logging
import time
from collections import deque

from mlapi.errors import InsufficientMemory, MlapiError, NotFound, without_host_paths
from mlapi.observability.metrics import Metrics
from mlapi.registry.loading import Loader, settle_garbage_collector
from mlapi.registry.versions import ModelRecord, ModelVersion, State
from mlapi.repository import manifest, rollback
from mlapi.repository import scan as repo_scan
from mlapi.settings import Settings, available_cpus

__all__ = ["ModelRecord", "ModelRegistry", "ModelVersion", "State"]
log = logging.getLogger("mlapi.registry")
ROLLOUT_OUTCOMES = ("promoted", "failed", "refused", "rolled_back")


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self.metrics = metrics or Metrics()
        self._records: dict[str, ModelRecord] = {}
        self._load_slots = asyncio.Semaphore(settings.load_concurrency)
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.scan_error: str | None = None
        threads = settings.intra_op_threads
        if not threads:
            threads = max(1, int(available_cpus() // settings.workers))
        self.intra_op_threads = threads
        self._loader = Loader(settings, self.metrics, threads)

    # ----- queries -------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The READY version to serve; NotFound for unknown names, NotReady otherwise."""
        record = self._records.get(name)
        if record is None or record.unloaded:
            raise NotFound(f"unknown model '{name}'")
        wanted = None
        if version is not None:
            if not repo_scan.VERSION.fullmatch(version):
                raise NotFound(f"model '{name}' has no version '{version[:64]}'")
            wanted = int(version)
        return record.ready_version(wanted)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model of the repository (safe to use as a metric label)."""
        return name in self._records

    def record(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None or record.unloaded:
            raise NotFound(f"unknown model '{name}'")
        return record

    def records(self) -> list[ModelRecord]:
        return [self._records[name] for name in sorted(self._records)]

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
            entries = repo_scan.scan(self._settings.model_path, self._settings.pinned_version)
        except MlapiError as exc:
            self.scan_error = exc.message
            log.error("model repository cannot be read: %s", exc.message)
            return []
        for entry in entries:
            self._records[entry.name] = self._record_for(entry)
        return entries

    async def load_all(self) -> None:
        """Load every scanned model; returns when all have settled."""

        async def first_load(record: ModelRecord) -> None:
            # without the model's lock: an unload meanwhile withdraws what loads
            await self._load_versions(list(record.versions.values()))
            self._publish_serving(record)

        await asyncio.gather(*(first_load(r) for r in self.records()))
        settle_garbage_collector()

    async def load(self, name: str, changed_only: bool = False) -> ModelRecord:
        """Roll one model forward to what its folder holds now (every version the
        policy selects is reloaded; with ``changed_only``, only those whose files
        changed). The versions that serve keep serving until their replacements are
        READY; a replacement that fails leaves them as they are."""
        model_dir = self._settings.model_path / name
        if not repo_scan.MODEL_NAME.fullmatch(name) or not model_dir.is_dir():
            raise NotFound(f"no model '{name[:128]}' in the model repository")
        async with self._lock(name):
            entry = repo_scan.scan_model(model_dir, self._settings.pinned_version)
            old = self._records.get(name)
            if old is None or old.unloaded or not old.serves():
                fresh = self._record_for(entry)
                await self._load_versions(list(fresh.versions.values()))
                self._records[name] = fresh
                if old is not None and not old.unloaded:
                    self._retire(old.versions.values())
                self._publish_serving(fresh)
                settle_garbage_collector()
                return fresh
            await self._roll_forward(old, entry, changed_only)
            return old

    async def refresh(self) -> None:
        """One look at the repository: roll forward every served model whose files
        changed and load new model folders. Models unloaded through the API stay so."""
        try:
            names = [
                child.name
                for child in sorted(self._settings.model_path.iterdir())
                if child.is_dir() and repo_scan.MODEL_NAME.fullmatch(child.name)
            ]
        except OSError as exc:
            log.warning("model repository cannot be read: %s", type(exc).__name__)
            return
        for name in names:
            record = self._records.get(name)
            if record is not None and record.unloaded:
                continue
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
        async with self._lock(name):
            record.unloaded = True
            record.retired = tuple(record.versions)
            for version in [*record.versions.values(), *record.candidates.values()]:
                version.state = State.UNLOADING
                version.withdrawn = True
            for version in list(record.versions.values()):
                await version.aclose()
                version.state = State.UNAVAILABLE
            for version in record.previous.values():
                await version.aclose()
            record.versions.clear()
            record.candidates.clear()
            record.previous.clear()
            self.metrics.serving_version.labels(name).set(0)
            settle_garbage_collector()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for record in self.records():
            loaded = [*record.versions.values(), *record.candidates.values()]
            for version in [*loaded, *record.previous.values()]:
                await version.aclose()

    def publish_states(self) -> None:
        """Set mlapi_model_state, queue depth and in-flight gauges for every known
        model version (this process)."""
        for record in self._records.values():
            if record.unloaded:
                for number in record.retired:
                    self.metrics.set_state(record.name, str(number), "unavailable")
                continue
            for version in [*record.versions.values(), *record.candidates.values()]:
                self._loader.publish_state(version)
                if version.metrics is not None:
                    queued = version.batcher.queue_depth if version.batcher else 0
                    version.metrics.publish_load(queued)

    # ----- the rollout ---------------------------------------------------------
    async def _roll_forward(
        self, record: ModelRecord, entry: repo_scan.ModelEntry, changed_only: bool
    ) -> None:
        fresh = self._record_for(entry, quiet=changed_only)
        if fresh.error and fresh.error != record.rollout_error:
            self._count(record.name, "failed")
            log.warning("model %s: what serves keeps serving: %s", record.name, fresh.error)
        record.rollout_error = fresh.error
        record.rolled_back = dict(entry.rolled_back)
        reused: list[ModelVersion] = []  # copies kept loaded since a switch: back at once
        candidates: list[ModelVersion] = []
        for number, version in fresh.versions.items():
            if changed_only and self._unchanged(record, number, version):
                continue
            kept = record.previous.get(number)
            if kept is not None and kept.fingerprint == version.fingerprint:
                reused.append(record.previous.pop(number))
            else:
                candidates.append(version)
        stale = set(record.versions) - set(fresh.versions)
        if not candidates and not reused and not stale:
            return
        record.candidates = {  # failed candidates of versions no longer selected go
            number: version
            for number, version in record.candidates.items()
            if number in fresh.versions
        }
        record.candidates.update({v.version: v for v in candidates})
        await self._load_versions(candidates)
        replaced: list[ModelVersion] = []
        switched: list[ModelVersion] = []
        for version in [*reused, *candidates]:
            if version.state is State.READY:
                record.candidates.pop(version.version, None)
                previous = record.versions.get(version.version)
                record.versions[version.version] = version
                if previous is not None:
                    replaced.append(previous)
                if version not in reused:
                    switched.append(version)
                    self._count(record.name, "promoted")
                log.info("model %s v%d now serves", record.name, version.version)
            elif version.state is State.FAILED:
                self._count(record.name, "refused" if version.refused else "failed")
                log.warning(
                    "model %s v%d was not switched in; what served keeps serving: %s",
                    record.name,
                    version.version,
                    version.reason,
                )
        selected_serve = [
            version
            for number, version in record.versions.items()
            if number in fresh.versions and version.state is State.READY
        ]
        if selected_serve:  # what the policy selects serves: the rest can go
            replaced += [record.versions.pop(number) for number in stale]
        elif stale:
            log.warning(
                "model %s: the selected version(s) %s did not load; v%s keep serving",
                record.name,
                sorted(fresh.versions),
                ", v".join(map(str, sorted(stale))),
            )
        baking = [v for v in switched if v.config is not None and v.config.rollout.bake_s > 0]
        if switched:  # an older bake is over: its rollback target goes
            self._retire(record.previous.values())
            record.previous = {}
        if baking and replaced:
            record.previous = {v.version: v for v in replaced}
            for version in baking:
                self._start_bake(record, version)
        else:
            self._retire(replaced)
        self._publish_serving(record)

    # ----- after a switch: bake, and roll back by itself ------------------------
    def _start_bake(self, record: ModelRecord, version: ModelVersion) -> None:
        version.outcomes = deque()
        version.alert = asyncio.Event()
        task = asyncio.create_task(self._bake(record, version), name=f"mlapi-bake-{record.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _bake(self, record: ModelRecord, version: ModelVersion) -> None:
        """Watch a switched-in version's server errors for its bake window; past the
        threshold, go back to what it replaced (still loaded); else free that."""
        assert version.config is not None
        rollout = version.config.rollout
        outcomes = version.outcomes
        assert outcomes is not None
        alert = version.alert
        assert alert is not None
        deadline = time.monotonic() + rollout.bake_s
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):  # a server error wakes it at once
                await asyncio.wait_for(alert.wait(), min(0.25, rollout.window_s / 4))
            alert.clear()
            if record.versions.get(version.version) is not version:
                return  # superseded or unloaded meanwhile
            horizon = time.monotonic() - rollout.window_s
            while outcomes and outcomes[0][0] < horizon:
                outcomes.popleft()
            errors = sum(1 for _, failed in outcomes if failed)
            if len(outcomes) >= rollout.min_requests and errors > rollout.max_error_ratio * len(
                outcomes
            ):
                reason = (
                    f"rolled back: {errors} of {len(outcomes)} requests failed on the server "
                    f"within {rollout.window_s:g}s (max_error_ratio {rollout.max_error_ratio:g})"
                )
                await self._roll_back(record, version, reason)
                return
        version.outcomes = version.alert = None
        async with self._lock(record.name):
            if record.versions.get(version.version) is version:
                self._retire(record.previous.values())
                record.previous = {}

    async def _roll_back(self, record: ModelRecord, version: ModelVersion, reason: str) -> None:
        """Put back what ``version`` replaced, at once, and mark ``version`` rolled back
        in the repository, so every other worker and replica follows at its next look
        and it is not tried again until its files change."""
        async with self._lock(record.name):
            if record.versions.get(version.version) is not version or not record.previous:
                return
            del record.versions[version.version]
            record.versions.update(record.previous)
            record.previous = {}
            record.candidates[version.version] = ModelVersion(
                version.name,
                version.version,
                version.path,
                version.config,
                state=State.FAILED,
                reason=reason,
                fingerprint=version.fingerprint,
            )
            version.outcomes = version.alert = None
            self._retire([version])
            self._count(record.name, "rolled_back")
            self._publish_serving(record)
            log.warning("model %s v%d %s", record.name, version.version, reason)
            try:
                rollback.mark(self._settings.model_path / record.name, version.version, reason)
            except OSError as exc:
                log.error(
                    "model %s: the rollback of v%d could not be recorded in the repository "
                    "(%s): other workers will not follow",
                    record.name,
                    version.version,
                    type(exc).__name__,
                )

    def _unchanged(self, record: ModelRecord, number: int, fresh: ModelVersion) -> bool:
        """Whether a selected version is what already serves (same files), or a failed
        candidate whose files have not changed since it failed."""
        for known in (record.versions.get(number), record.candidates.get(number)):
            if known is not None and known.fingerprint == fresh.fingerprint:
                return known.state in (State.READY, State.FAILED)
        return False

    def _retire(self, versions: object) -> None:
        """Let each version answer what it holds, then free it, in the background."""
        grace_s = self._settings.request_timeout_s + self._settings.body_timeout_s
        for version in list(versions):  # type: ignore[call-overload]
            task = asyncio.create_task(self._retire_one(version, grace_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire_one(self, version: ModelVersion, grace_s: float) -> None:
        await version.retire(grace_s)
        self._loader.publish_state(version)
        log.info("model %s v%d unloaded", version.name, version.version)
        settle_garbage_collector()

    def _count(self, name: str, outcome: str) -> None:
        self.metrics.rollouts.labels(name, outcome).inc()

    def _publish_serving(self, record: ModelRecord) -> None:
        ready = [v.version for v in record.versions.values() if v.state is State.READY]
        self.metrics.serving_version.labels(record.name).set(max(ready, default=0))

    # ----- internals -----------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._model_locks.setdefault(name, asyncio.Lock())

    def _record_for(self, entry: repo_scan.ModelEntry, quiet: bool = False) -> ModelRecord:
        model_error = without_host_paths(entry.error, entry.path) if entry.error else None
        record = ModelRecord(entry.name, error=model_error)
        for outcome in ROLLOUT_OUTCOMES:  # every outcome is exposed, from 0
            self.metrics.rollouts.labels(entry.name, outcome)
        if not quiet:
            for note in entry.notes:
                log.warning("model %s: %s", entry.name, note)
        for item in entry.versions:
            version = ModelVersion(
                item.name,
                item.version,
                item.path,
                item.config,
                timeout_s=self._settings.request_timeout_s,
                fingerprint=manifest.fingerprint(item.path),
            )
            if item.error:
                version.state = State.FAILED
                version.reason = without_host_paths(item.error, item.path)
            record.versions[item.version] = version
        if model_error and not quiet:
            log.error("model %s cannot be served: %s", entry.name, model_error)
        return record

    async def _load_versions(self, versions: list[ModelVersion]) -> None:
        await asyncio.gather(*(self._load_one(v) for v in versions if v.state is State.LOADING))

    async def _load_one(self, version: ModelVersion) -> None:
        async with self._load_slots:
            try:
                await asyncio.to_thread(self._loader.load_and_warm, version)
            except MlapiError as exc:
                version.state, version.reason = State.FAILED, exc.message
                version.refused = isinstance(exc, InsufficientMemory)
            except Exception as exc:  # a runtime bug must not kill the other models
                version.state = State.FAILED
                version.reason = f"unexpected {type(exc).__name__} while loading"
                log.exception("model %s v%d: unexpected error", version.name, version.version)
        if version.state is State.FAILED:
            version.reason = without_host_paths(version.reason or "", version.path)
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
