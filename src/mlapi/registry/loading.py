"""Loading one model version: check its files (manifest, no pickle), load it with its
runtime, warm it up with one real inference, and give it its batcher. Runs on a
loading thread, never on the event loop."""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlapi.batching import Batcher
from mlapi.errors import MlapiError, ModelLoadError
from mlapi.observability.metrics import Metrics
from mlapi.registry.memory import MemoryBudget, resident_bytes
from mlapi.registry.versions import ModelVersion
from mlapi.repository import manifest, safety
from mlapi.repository.config import ModelConfig
from mlapi.runtimes import catalog
from mlapi.runtimes.base import Interruptible, LoadContext, Runtime
from mlapi.settings import Settings
from mlapi.tensors import DATATYPES, Signature

log = logging.getLogger("mlapi.registry")


class Loader:
    def __init__(self, settings: Settings, metrics: Metrics, intra_op_threads: int) -> None:
        self._settings = settings
        self.metrics = metrics
        self.intra_op_threads = intra_op_threads
        self.budget = MemoryBudget(settings.memory_limit, settings.workers, settings.cache_dir)
        # loads under way in this process, and loads started: a load that overlapped
        # another cannot tell its own peak from the other's growth
        self._counting = threading.Lock()
        self._active = 0
        self._started = 0

    def publish_state(self, version: ModelVersion) -> None:
        self.metrics.set_state(version.name, str(version.version), version.state.value.lower())

    def need(self, version: ModelVersion) -> tuple[int, str]:
        """(the bytes one copy of ``version`` needs, where the figure comes from)."""
        assert version.config is not None
        return self.budget.need(version.path, version.config, version.fingerprint)

    def check_loadable(self, version: ModelVersion, evictable: int) -> None:
        """On a loading thread: what a load would check first, without loading: its
        files (manifest, no pickle, a runtime for them) and its need against this
        worker's share with ``evictable`` bytes of other models evicted."""
        assert version.config is not None
        manifest.verify(version.path)
        safety.check_folder(version.path, self._settings.allow_pickle)
        catalog.choose(version.path, version.config)
        self.budget.check_share(version.path, version.config, version.fingerprint, -evictable)

    def load_and_warm(self, version: ModelVersion, reserved: int = 0) -> None:
        """On a loading thread: verify, load, warm up, and make ``version`` READY. An
        on-demand version is checked against this worker's share, less ``reserved``
        (other loads under way here); any other against the whole limit."""
        assert version.config is not None
        started = time.perf_counter()
        manifest.verify(version.path)
        safety.check_folder(version.path, self._settings.allow_pickle)
        if version.on_demand:
            self.budget.check_share(version.path, version.config, version.fingerprint, reserved)
        else:
            self.budget.check(version.path, version.config, version.fingerprint)
        with self._counting:
            self._active += 1
            self._started += 1
            first = self._started
            overlapped = self._active > 1
        try:
            self._load(version, started)
        finally:
            with self._counting:
                self._active -= 1
                overlapped = overlapped or self._started != first
            if version.measured_peak:
                self._remember(version, overlapped)

    def _remember(self, version: ModelVersion, overlapped: bool) -> None:
        """What the next load of the same files needs: the peak of this one, not what
        stayed. Another load beside it adds its growth to the peak seen: then what
        was known before stands (or what stayed, if more), and with nothing known the
        peak is taken no higher than the estimate from the files."""
        assert version.config is not None
        peak = max(version.measured_peak, version.measured)
        if overlapped:
            known = self.budget.known(version.fingerprint)
            if known:
                peak = max(version.measured, known)
            else:
                estimate = self.budget.estimate(version.path, version.fingerprint)
                peak = max(version.measured, min(peak, estimate))
        self.budget.remember(version.fingerprint, peak)

    def _load(self, version: ModelVersion, started: float) -> None:
        assert version.config is not None
        resident_before = resident_bytes()
        runtime_name, model_file = catalog.choose(version.path, version.config)
        ctx = LoadContext(
            model_dir=version.path,
            model_file=model_file,
            config=version.config,
            allow_pickle=self._settings.allow_pickle,
            intra_op_threads=self.intra_op_threads,
            cache_dir=self._settings.cache_dir,
            device=self._settings.device,
        )
        with PeakResident() as peak:
            runtime = catalog.factory(runtime_name)(ctx)
            load_seconds = time.perf_counter() - started
            version.loaded(runtime, runtime_name, load_seconds)
            self.publish_state(version)
            started = time.perf_counter()
            warm_up(version.name, runtime, version.config)
            warmup_seconds = time.perf_counter() - started
        version.measured = max(0, resident_bytes() - resident_before)
        version.measured_peak = max(0, peak.bytes - resident_before)
        executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"model-{version.name}-{version.version}"
        )
        batching = version.config.batching
        metrics = self.metrics.model(version.name, str(version.version))
        labels = (version.name, str(version.version))
        self.metrics.load_seconds.labels(*labels).set(load_seconds)
        self.metrics.warmup_seconds.labels(*labels).set(warmup_seconds)
        batcher = Batcher(
            f"{version.name}:{version.version}",
            runtime.predict,
            executor,
            batchable=batching.enabled and stackable(runtime.signature),
            max_batch_size=batching.max_batch_size,
            max_delay_ms=batching.max_delay_ms,
            max_queue=batching.max_queue,
            observer=metrics,
            interrupt=runtime.interrupt if isinstance(runtime, Interruptible) else None,
        )
        if version.serving(warmup_seconds, executor, metrics, batcher):
            self.publish_state(version)


class PeakResident:
    """The highest resident memory of this process while the block runs, sampled
    every 2 ms on a thread of its own: a load's peak (the file read, the tensors
    made from it, a runtime's packed copies) is above what stays after it."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.bytes = resident_bytes()
        self._every_s = every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="mlapi-peak", daemon=True)

    def __enter__(self) -> PeakResident:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.bytes = max(self.bytes, resident_bytes())

    def _sample(self) -> None:
        while not self._done.wait(self._every_s):
            self.bytes = max(self.bytes, resident_bytes())


def warm_up(name: str, runtime: Runtime, config: ModelConfig) -> None:
    """One real inference: on the configured warm-up inputs, else on zeros shaped
    like the signature (any-size dimensions as 1)."""
    if not config.warmup.enabled:
        return
    signature = runtime.signature
    try:
        inputs = warmup_inputs(signature, config)
        if inputs is None:
            log.info("model %s: no signature and no [warmup] inputs; warm-up skipped", name)
            return
        runtime.predict(inputs, signature.output_names())
    except MlapiError as exc:
        raise ModelLoadError(f"warm-up inference failed: {exc.message}") from None
    except Exception as exc:
        raise ModelLoadError(
            f"warm-up inference failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if str(exc)
            else f"warm-up inference failed: {type(exc).__name__}"
        ) from None


def warmup_inputs(signature: Signature, config: ModelConfig) -> dict[str, np.ndarray] | None:
    """One request's inputs: the configured [warmup] inputs, else zeros shaped like
    the signature (any-size dimensions as 1); None when the model says neither."""
    given = config.warmup.inputs
    if given is not None:
        return {key: _warmup_array(key, value, signature) for key, value in given.items()}
    if signature.dynamic:
        return None
    return {spec.name: _zeros(spec.datatype, spec.shape) for spec in signature.inputs}


def settle_garbage_collector() -> None:
    """Move what loading allocated (models, sessions, modules) out of the cyclic
    collector's sight. Full collections otherwise rescan all of it while requests
    wait: on the default model under load this halves p99 (14.7 -> 6.9 ms).
    Frozen objects are never collected, so what was frozen before is thawed first:
    a model unloaded since (a Python module's cycles with its functions) is freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def stackable(signature: Signature) -> bool:
    """Requests can be stacked along the first dimension when every input and
    output has a batch dimension of any size."""
    return (
        not signature.dynamic
        and bool(signature.inputs)
        and all(spec.has_batch_dim for spec in signature.inputs)
        and bool(signature.outputs)
        and all(spec.has_batch_dim for spec in signature.outputs)
    )


def _zeros(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    concrete = tuple(1 if dim < 1 else dim for dim in shape)
    if datatype == "BYTES":
        return np.full(concrete, "", dtype=object)
    return np.zeros(concrete, dtype=DATATYPES[datatype])


def _warmup_array(name: str, value: object, signature: Signature) -> np.ndarray:
    spec = signature.input(name)
    if spec is None and not signature.dynamic:
        raise ModelLoadError(f"[warmup] names unknown input '{name}'")
    dtype = DATATYPES[spec.datatype] if spec else None
    return np.asarray(value, dtype=dtype)
