"""A gated rollout in a worker: the scan names a model's trial version (the newest,
its strategy shadow or canary, not yet decided); it loads beside what serves and
its gate starts. The gate's decision is written to the repository
(``rollback.decide``: the first worker's holds) and the model is looked at again at
once; every other worker and replica reads the same mark at its next poll. Then
the scan selects a promoted version like any other, and the loaded trial is
switched in (``take_promoted``), or leaves it out as refused, and the trial ends
here with the mark's reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlapi.errors import MlapiError
from mlapi.registry.canary import Canary
from mlapi.registry.core import RegistryCore, log
from mlapi.registry.shadow import Shadow
from mlapi.registry.versions import ModelRecord, ModelVersion, State
from mlapi.repository import rollback


class Trials:
    """Starting, following and ending the trial versions of this worker's models."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core
        self.started: list[Shadow | Canary] = []  # every gate started: joined at close

    async def close(self) -> None:
        """Stop every gate and wait for its thread (a thread left inside a runtime at
        the interpreter's exit aborts the process)."""
        for gate in self.started:
            gate.stop()
            await gate.finished(self.core.settings.shutdown_timeout_s)
        self.started.clear()

    # ----- what the scan says ---------------------------------------------------------
    def take_promoted(self, record: ModelRecord, fresh: ModelVersion) -> ModelVersion | None:
        """The loaded trial, when the scan now selects it as a version (it was
        promoted): its gate ends here and it is handed to the switch."""
        trial = record.trial
        if (
            trial is not None
            and trial.version == fresh.version
            and trial.fingerprint == fresh.fingerprint
            and trial.state is State.READY
        ):
            self._end(record, retire=False)
            return trial
        return None

    async def update(
        self, record: ModelRecord, wanted: ModelVersion | None, refused: dict[int, str]
    ) -> None:
        """End a trial the scan no longer names (refused, removed, changed) and start
        the one it names, once (a failed trial is not tried again until its files
        change). Called under the model's lock."""
        record.refused = dict(refused)
        current = record.trial
        if current is not None and not _same(current, wanted):
            self._end(record, retire=True)
            why = refused.get(current.version)
            if why is not None:
                rollout = current.config.rollout if current.config else None
                canary = rollout is not None and rollout.strategy == "canary"
                self.core.count(record.name, "rolled_back" if canary else "refused")
                record.candidates[current.version] = current.failed_copy(f"refused: {why}")
                log.warning("model %s v%d refused: %s", record.name, current.version, why)
        if wanted is None or record.trial is not None:
            return
        for known in (record.candidates.get(wanted.version), record.versions.get(wanted.version)):
            if known is not None and known.fingerprint == wanted.fingerprint:
                return  # failed before, or serves already
        record.trial = wanted
        await self.core.load_versions([wanted])
        if record.trial is not wanted:
            return  # ended while it loaded
        if wanted.state is not State.READY:
            record.trial = None
            if wanted.state is State.FAILED:
                record.candidates[wanted.version] = wanted
                self.core.count(record.name, "refused" if wanted.refused else "failed")
            return
        self._start(record, wanted)

    # ----- its gate -------------------------------------------------------------------
    def _start(self, record: ModelRecord, trial: ModelVersion) -> None:
        ready = [v for v in record.versions.values() if v.state is State.READY]
        assert trial.config is not None
        rollout = trial.config.rollout
        if not ready:
            self._decided(record, trial, "promoted", "no other version serves to compare with")
            return
        served = max(ready, key=lambda v: v.version)

        def on_decision(decision: str, reason: str) -> None:
            self._decided(record, trial, decision, reason)

        gate: Shadow | Canary
        if rollout.strategy == "shadow":
            settings = self.core.settings
            samples = None
            if settings.log_dir is not None:
                name = f"{trial.name}-v{trial.version}.jsonl"
                samples = Path(settings.log_dir) / "shadow" / name
            gate = Shadow(trial, rollout, self.core.metrics, on_decision, samples)
            gate.start()
        else:
            gate = Canary(trial, served, rollout, self.core.metrics, on_decision)
            trial.watch = gate.watch_trial
            task = asyncio.create_task(gate.run(), name=f"mlapi-canary-{record.name}")
            self.core.retiring.add(task)
            task.add_done_callback(self.core.retiring.discard)
            gate.task = task
        record.gate = gate
        _watch(gate, served)
        self.started = [g for g in self.started if not g.done()]
        self.started.append(gate)
        log.info(
            "model %s v%d on trial (%s) beside v%d, which serves",
            record.name,
            trial.version,
            rollout.strategy,
            served.version,
        )

    def follow(self, record: ModelRecord) -> None:
        """After a switch: the gate watches the newest version that serves now (the
        one it watched may have been replaced while the trial ran)."""
        gate = record.gate
        ready = [v for v in record.versions.values() if v.state is State.READY]
        if gate is None or not ready:
            return
        newest = max(ready, key=lambda v: v.version)
        if gate.served is not newest:
            _unwatch(gate)
            _watch(gate, newest)

    def _detach(self, record: ModelRecord) -> Shadow | Canary | None:
        """The gate sees no more traffic: no copies, no share. The gate, if any."""
        gate = record.gate
        if gate is None:
            return None
        record.gate = None
        _unwatch(gate)
        gate.trial.watch = None
        gate.stop()
        return gate

    def end(self, record: ModelRecord, retire: bool = True) -> Shadow | Canary | None:
        """The trial ends here (an unload, a reload from scratch, a stop); its gate."""
        return self._end(record, retire)

    def _end(self, record: ModelRecord, retire: bool) -> Shadow | Canary | None:
        gate = self._detach(record)
        trial, record.trial = record.trial, None
        if retire and trial is not None:
            task = asyncio.create_task(self._retire(gate, trial))
            self.core.retiring.add(task)
            task.add_done_callback(self.core.retiring.discard)
        return gate

    async def _retire(self, gate: Shadow | Canary | None, trial: ModelVersion) -> None:
        """Free a trial once its gate's thread is done with its runtime."""
        if gate is not None:
            await gate.finished(self.core.settings.request_timeout_s)
        self.core.retire([trial])

    def _decided(self, record: ModelRecord, trial: ModelVersion, decision: str, why: str) -> None:
        """A gate's decision (on the loop): no more traffic to the trial at once;
        recorded in the repository; then the model is looked at again."""
        if record.trial is not trial:
            return
        self._detach(record)
        log.info("model %s v%d trial %s: %s", record.name, trial.version, decision, why)
        task = asyncio.create_task(self._record(record, trial, decision, why))
        self.core.retiring.add(task)
        task.add_done_callback(self.core.retiring.discard)

    async def _record(
        self, record: ModelRecord, trial: ModelVersion, decision: str, why: str
    ) -> None:
        model_dir = self.core.settings.model_path / record.name
        try:
            held, held_why = await asyncio.to_thread(
                rollback.decide, model_dir, trial.version, decision, why
            )
        except OSError as exc:
            log.error(
                "model %s: the trial decision on v%d could not be recorded in the "
                "repository (%s): it ends here, not tried again until its files change",
                record.name,
                trial.version,
                type(exc).__name__,
            )
            async with self.core.lock(record.name):
                if record.trial is trial:
                    self._end(record, retire=True)
                    record.candidates[trial.version] = trial.failed_copy(
                        f"{decision} ({why}) but not recorded: {type(exc).__name__}"
                    )
            return
        if (held, held_why) != (decision, why):
            log.info(
                "model %s v%d: another server decided first: %s",
                record.name,
                trial.version,
                held,
            )
        if self.core.reload is not None:
            try:
                await self.core.reload(record.name)
            except MlapiError as exc:  # the model folder went meanwhile
                log.info("model %s: %s", record.name, exc.message)


def _watch(gate: Shadow | Canary, served: ModelVersion) -> None:
    """Hook the gate to the version that serves: its answers copied (shadow), or a
    share of its requests and each one's outcome (canary)."""
    gate.served = served
    if isinstance(gate, Shadow):
        served.shadow = gate
        if served.batcher is not None:
            served.batcher.cost = gate.served_cost
    else:
        served.canary = gate
        served.watch = gate.watch_served


def _unwatch(gate: Shadow | Canary) -> None:
    served = gate.served
    if served is not None:
        served.shadow = served.canary = served.watch = None
        if served.batcher is not None:
            served.batcher.cost = None


def _same(current: ModelVersion, wanted: ModelVersion | None) -> bool:
    return (
        wanted is not None
        and wanted.version == current.version
        and wanted.fingerprint == current.fingerprint
    )
