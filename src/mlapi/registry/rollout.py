"""A model's rollout: roll forward to what its folder holds (candidates load beside
what serves and are switched in once READY; what they replace answers what it
holds), keep the replaced version loaded while the new one bakes, and roll back by
itself when the new one fails on real traffic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

from mlapi.registry.core import RegistryCore, log
from mlapi.registry.trials import Trials
from mlapi.registry.versions import Bake, ModelRecord, ModelVersion, State
from mlapi.repository import rollback
from mlapi.repository import scan as repo_scan


class Rollouts:
    """Rolling one model forward and back, on the registry's shared core."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core
        self.trials = Trials(core)

    async def roll_forward(
        self, record: ModelRecord, entry: repo_scan.ModelEntry, changed_only: bool
    ) -> None:
        entry = await self._keep_serving(record, entry)
        fresh = self.core.record_for(entry, quiet=changed_only)
        if fresh.error and fresh.error != record.rollout_error:
            self.core.count(record.name, "failed")
            log.warning("model %s: what serves keeps serving: %s", record.name, fresh.error)
        record.rollout_error = fresh.error
        record.rolled_back = dict(entry.rolled_back)
        reused, candidates = self._pick(record, fresh, changed_only)
        await self.trials.update(record, fresh.trial, fresh.refused)
        stale = set(record.versions) - set(fresh.versions)
        if not candidates and not reused and (not stale or not self._serves(record, fresh)):
            # nothing to load, and nothing that could take over from what serves: the
            # same look as the last one (a failed selected version is said once)
            return
        record.candidates = {  # failed candidates of versions no longer selected go
            number: version
            for number, version in record.candidates.items()
            if number in fresh.versions
        }
        record.candidates.update({v.version: v for v in candidates})
        if record.cache is not None and candidates:  # on demand: room beside what serves
            sized = [await asyncio.to_thread(self.core.loader.need, v) for v in candidates]
            need = sum(size for size, _ in sized)
            await self.core.cache.make_room(need, keep=record)
        await self.core.load_versions(candidates)
        replaced, switched = self._switch_in(record, reused, candidates)
        self.core.count_loads(record, switched, "rollout")
        if self._serves(record, fresh):
            # what the policy selects serves: the versions it no longer selects can go
            replaced += [record.versions.pop(number) for number in stale]
        elif stale:
            log.warning(
                "model %s: the selected version(s) %s did not load; v%s keep serving",
                record.name,
                sorted(fresh.versions),
                ", v".join(map(str, sorted(stale))),
            )
        self._keep_or_retire(record, replaced, switched)
        self.trials.follow(record)
        self.core.publish_serving(record)

    async def _keep_serving(
        self, record: ModelRecord, entry: repo_scan.ModelEntry
    ) -> repo_scan.ModelEntry:
        """A version that serves here is not demoted to a trial (its model's strategy
        became gated after it was switched in): it is recorded as promoted, and the
        folder is looked at again."""
        trial = entry.trial
        served = record.versions.get(trial.version) if trial is not None else None
        if (
            trial is None
            or served is None
            or served.state is not State.READY
            or served.fingerprint != trial.fingerprint
        ):
            return entry
        why = "it served before its model's rollout was gated"
        try:
            await asyncio.to_thread(rollback.decide, entry.path, trial.version, "promoted", why)
        except OSError as exc:  # a read-only repository: it keeps serving, unrecorded
            log.warning(
                "model %s v%d keeps serving; its promotion cannot be recorded (%s)",
                record.name,
                trial.version,
                type(exc).__name__,
            )
            return replace(entry, versions=(*entry.versions[1:], trial), trial=None)
        return await asyncio.to_thread(
            repo_scan.scan_model, entry.path, self.core.settings.pinned_version
        )

    @staticmethod
    def _serves(record: ModelRecord, fresh: ModelRecord) -> bool:
        """Whether a version the policy selects now serves."""
        return any(
            version.state is State.READY
            for number, version in record.versions.items()
            if number in fresh.versions
        )

    def _pick(
        self, record: ModelRecord, fresh: ModelRecord, changed_only: bool
    ) -> tuple[list[ModelVersion], list[ModelVersion]]:
        """(copies kept loaded since a switch, back at once; versions to load)."""
        reused: list[ModelVersion] = []
        candidates: list[ModelVersion] = []
        for number, version in fresh.versions.items():
            if changed_only and self._unchanged(record, number, version):
                continue
            kept = record.previous.get(number)
            if kept is not None and kept.fingerprint == version.fingerprint:
                reused.append(record.previous.pop(number))
            else:  # a promoted trial is loaded already: it goes in as a new version
                candidates.append(self.trials.take_promoted(record, version) or version)
        return reused, candidates

    def _switch_in(
        self, record: ModelRecord, reused: list[ModelVersion], candidates: list[ModelVersion]
    ) -> tuple[list[ModelVersion], list[ModelVersion]]:
        """Route to every READY one; (what they replaced, the newly loaded among them)."""
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
                    self.core.count(record.name, "promoted")
                log.info("model %s v%d now serves", record.name, version.version)
            elif version.state is State.FAILED:
                self.core.count(record.name, "refused" if version.refused else "failed")
                log.warning(
                    "model %s v%d was not switched in; what served keeps serving: %s",
                    record.name,
                    version.version,
                    version.reason,
                )
        return replaced, switched

    def _keep_or_retire(
        self, record: ModelRecord, replaced: list[ModelVersion], switched: list[ModelVersion]
    ) -> None:
        """A new version that bakes keeps what it replaced loaded as the rollback
        target; otherwise that is retired."""
        if switched:  # an older bake is over: its rollback target goes
            self.core.retire(record.previous.values())
            record.previous = {}
        baking = [v for v in switched if v.config is not None and v.config.rollout.bake_s > 0]
        if baking and replaced:
            record.previous = {v.version: v for v in replaced}
            for version in baking:
                self._start_bake(record, version)
        else:
            self.core.retire(replaced)

    # ----- after a switch: bake, and roll back by itself ------------------------
    def _start_bake(self, record: ModelRecord, version: ModelVersion) -> None:
        version.bake = Bake()
        task = asyncio.create_task(self._bake(record, version), name=f"mlapi-bake-{record.name}")
        self.core.retiring.add(task)
        task.add_done_callback(self.core.retiring.discard)

    async def _bake(self, record: ModelRecord, version: ModelVersion) -> None:
        """Watch a switched-in version's server errors for its bake window; past the
        threshold, go back to what it replaced (still loaded); else free that."""
        assert version.config is not None
        rollout = version.config.rollout
        bake = version.bake
        assert bake is not None
        deadline = time.monotonic() + rollout.bake_s
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):  # a server error wakes it at once
                await asyncio.wait_for(bake.alert.wait(), min(0.25, rollout.window_s / 4))
            bake.alert.clear()
            if record.versions.get(version.version) is not version:
                return  # superseded or unloaded meanwhile
            breach = bake.breached(rollout)
            if breach is not None:
                errors, seen = breach
                reason = (
                    f"rolled back: {errors} of {seen} requests failed on the server "
                    f"within {rollout.window_s:g}s (max_error_ratio {rollout.max_error_ratio:g})"
                )
                await self._roll_back(record, version, reason)
                return
        version.bake = None
        async with self.core.lock(record.name):
            if record.versions.get(version.version) is version:
                self.core.retire(record.previous.values())
                record.previous = {}

    async def _roll_back(self, record: ModelRecord, version: ModelVersion, reason: str) -> None:
        """Put back what ``version`` replaced, at once, and mark ``version`` rolled back
        in the repository, so every other worker and replica follows at its next look
        and it is not tried again until its files change."""
        async with self.core.lock(record.name):
            if record.versions.get(version.version) is not version or not record.previous:
                return
            del record.versions[version.version]
            record.versions.update(record.previous)
            record.previous = {}
            record.candidates[version.version] = version.failed_copy(reason)
            version.bake = None
            self.core.retire([version])
            self.trials.follow(record)
            self.core.count(record.name, "rolled_back")
            self.core.publish_serving(record)
            log.warning("model %s v%d %s", record.name, version.version, reason)
            try:
                rollback.mark(self.core.settings.model_path / record.name, version.version, reason)
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
