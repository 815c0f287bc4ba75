"""``model.toml``: the optional per-model (``<name>/model.toml``) and per-version
(``<name>/<version>/model.toml``) config. The version file's keys override the
model file's. Unknown keys are errors: a typo must not silently change nothing."""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlapi.errors import ModelLoadError
from mlapi.repository import files
from mlapi.tensors import DATATYPES, TensorSpec

CONFIG_FILE = "model.toml"
# The ranges of model.toml's numbers (README "model.toml"): wide enough for any real
# model, narrow enough that none turns a server's arithmetic into inf or nan.
MAX_COUNT = 1_000_000  # batch sizes, queue lengths, request counts
MAX_DELAY_MS = 10_000.0  # a batch never waits longer than 10 s for company
MAX_SECONDS = 7 * 86_400.0  # bake and window lengths: a week
MAX_MEMORY_MB = float(1 << 24)  # 16 TiB
_TOP_KEYS = {
    "runtime",
    "file",
    "inputs",
    "outputs",
    "labels",
    "batching",
    "warmup",
    "version_policy",
    "python_class",
    "trusted_types",
    "platform",
    "memory_mb",
    "rollout",
    "text",
    "logging",
    "load",
    "on_demand",
}
LOAD_MODES = ("eager", "on_demand")


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 64
    max_delay_ms: float = 0.0
    max_queue: int = 256
    enabled: bool = True


@dataclass(frozen=True)
class WarmupConfig:
    enabled: bool = True
    inputs: dict[str, Any] | None = None  # input name -> nested data for one request


@dataclass(frozen=True)
class VersionPolicy:
    latest: int | None = 1
    versions: tuple[int, ...] | None = None

    def select(self, available: list[int]) -> list[int]:
        if self.versions is not None:
            return sorted(v for v in self.versions if v in available)
        newest_first = sorted(available, reverse=True)
        return sorted(newest_first[: self.latest])


STRATEGIES = ("switch", "shadow", "canary")


@dataclass(frozen=True)
class RolloutConfig:
    """How a new version takes over (README "Rollout strategies").

    ``strategy``: ``switch`` serves it once it is READY; ``shadow`` first gives it a
    copy of ``shadow_fraction`` of live requests (the clients are answered by what
    serves) and promotes it once ``min_compared`` copies agree with what serves at
    ``min_agreement`` or more (numbers within ``tolerance``, relative above 1,
    absolute below) and its median latency is at most ``max_latency_ratio`` times
    the serving one's; it is refused at once when agreement fails, and after
    ``max_shadow_s`` when latency still does. ``canary`` lets it answer
    ``canary_percent`` of requests, step by step, each step ``step_s`` long and at
    least ``min_requests`` requests, chosen by a stable hash of the request header
    ``canary_key`` (the same key always meets the same version), under the error
    gate below and the latency gate.

    After a new version is switched in, the one it replaced stays loaded for
    ``bake_s``; if the new one's server errors (5xx) pass ``max_error_ratio`` of at
    least ``min_requests`` requests within the last ``window_s``, the server goes back."""

    bake_s: float = 60.0
    window_s: float = 30.0
    max_error_ratio: float = 0.2
    min_requests: int = 20
    strategy: str = "switch"
    shadow_fraction: float = 1.0
    tolerance: float = 1e-4
    min_compared: int = 200
    min_agreement: float = 0.99
    max_latency_ratio: float = 1.5
    max_shadow_s: float = 600.0
    canary_percent: tuple[float, ...] = (10.0, 50.0, 100.0)
    step_s: float = 60.0
    canary_key: str = "x-request-id"

    @property
    def gated(self) -> bool:
        """Whether a new version must pass a gate (shadow or canary) before it serves."""
        return self.strategy != "switch"


@dataclass(frozen=True)
class LoggingConfig:
    """The payload log (README "Payload log"): ``sample`` of the requests (None: the
    server's MLAPI_PAYLOAD_SAMPLE) written with their inputs and outputs, each tensor
    cut to ``max_elements`` values (its shape kept), the inputs named in ``redact``
    replaced by a hash of their values."""

    sample: float | None = None
    redact: tuple[str, ...] = ()
    max_elements: int = 64
    # drift of the sampled requests against a reference (serving/drift.py)
    drift: bool = True
    reference_requests: int = 1000
    max_features: int = 32
    drift_window: int = 2000


@dataclass(frozen=True)
class OnDemandConfig:
    """How an on-demand model (``load = "on_demand"``) lives in a worker's cache
    (README "More models than memory"). None: the server's default."""

    pin: bool = False  # once loaded, never evicted
    min_resident_s: float | None = None  # not evicted sooner after it loaded (no thrash)
    idle_unload_s: float | None = None  # unloaded after this long with no request (0: never)


@dataclass(frozen=True)
class ModelConfig:
    runtime: str | None = None
    file: str | None = None
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    labels: tuple[str, ...] | None = None
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    python_class: str | None = None
    trusted_types: tuple[str, ...] = ()
    platform: str | None = None
    memory_mb: float | None = None  # what the model needs in memory, when files do not say
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    text: dict[str, Any] | None = None  # the text runtime's table (runtimes/text_config.py)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    load: str | None = None  # "eager" or "on_demand"; None: MLAPI_MODEL_LOADING
    on_demand: OnDemandConfig = field(default_factory=OnDemandConfig)


def read_raw(path: Path) -> dict[str, Any]:
    """The TOML table in ``path``, or {} if there is no such file."""
    try:
        text = files.read_capped(path, files.CONFIG_MAX_BYTES).decode("utf-8")
        return tomllib.loads(text)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path.parent.name}/{path.name} is not valid TOML: {exc}") from None
    except files.NotReadable as exc:
        raise ModelLoadError(f"{path.parent.name}/{path.name} {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path.name} cannot be read ({type(exc).__name__})") from None


def merge(model_level: dict[str, Any], version_level: dict[str, Any]) -> dict[str, Any]:
    merged = dict(model_level)
    for key, value in version_level.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def parse(raw: dict[str, Any]) -> ModelConfig:
    """Validate a merged raw table into a ModelConfig; ModelLoadError names the key."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ModelLoadError(f"model.toml: unknown key(s) {sorted(unknown)}")
    return ModelConfig(
        runtime=_opt_str(raw, "runtime"),
        file=_opt_str(raw, "file"),
        inputs=_tensor_specs(raw, "inputs"),
        outputs=_tensor_specs(raw, "outputs"),
        labels=_opt_str_tuple(raw, "labels"),
        batching=_batching(raw.get("batching", {})),
        warmup=_warmup(raw.get("warmup", {})),
        version_policy=_version_policy(raw.get("version_policy", {})),
        python_class=_opt_str(raw, "python_class"),
        trusted_types=_opt_str_tuple(raw, "trusted_types") or (),
        platform=_opt_str(raw, "platform"),
        memory_mb=_memory_mb(raw),
        rollout=_rollout(raw.get("rollout", {})),
        text=_opt_table(raw, "text"),
        logging=_logging(raw.get("logging", {})),
        load=_load_mode(raw),
        on_demand=_on_demand(raw.get("on_demand", {})),
    )


def _load_mode(raw: dict[str, Any]) -> str | None:
    value = raw.get("load")
    if value is not None and value not in LOAD_MODES:
        raise ModelLoadError(f"model.toml: 'load' must be one of {list(LOAD_MODES)}")
    return value


def _on_demand(value: Any) -> OnDemandConfig:
    table = _table(value, "on_demand", {"pin", "min_resident_s", "idle_unload_s"})
    pin = table.get("pin", False)
    if not isinstance(pin, bool):
        raise ModelLoadError("model.toml: [on_demand] pin must be true or false")
    seconds = {
        key: _number(table, key, "on_demand", 0, 0, MAX_SECONDS) if key in table else None
        for key in ("min_resident_s", "idle_unload_s")
    }
    return OnDemandConfig(pin=pin, **seconds)


def _opt_table(raw: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, dict):
        raise ModelLoadError(f"model.toml: [{key}] must be a table")
    return value


def _opt_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ModelLoadError(f"model.toml: '{key}' must be a string")
    return value


def _opt_str_tuple(raw: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ModelLoadError(f"model.toml: '{key}' must be a list of strings")
    return tuple(value)


def _tensor_specs(raw: dict[str, Any], key: str) -> tuple[TensorSpec, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ModelLoadError(f"model.toml: '{key}' must be a non-empty array of tables")
    specs = []
    for index, item in enumerate(value):
        where = f"model.toml: {key}[{index}]"
        if not isinstance(item, dict) or set(item) - {"name", "datatype", "shape"}:
            raise ModelLoadError(f"{where} takes only name, datatype and shape")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise ModelLoadError(f"{where}: 'name' must be a non-empty string")
        if datatype not in DATATYPES:
            raise ModelLoadError(f"{where}: 'datatype' must be one of {sorted(DATATYPES)}")
        if not isinstance(shape, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and (dim == -1 or dim > 0)
            for dim in shape
        ):
            raise ModelLoadError(f"{where}: 'shape' must be a list of positive ints or -1")
        specs.append(TensorSpec(name, datatype, tuple(shape)))
    if len({spec.name for spec in specs}) != len(specs):
        raise ModelLoadError(f"model.toml: '{key}' has duplicate names")
    return tuple(specs)


def _table(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelLoadError(f"model.toml: [{key}] must be a table")
    unknown = set(value) - allowed
    if unknown:
        raise ModelLoadError(f"model.toml: [{key}] unknown key(s) {sorted(unknown)}")
    return value


def _number(
    table: dict[str, Any], key: str, section: str, default: float, low: float, high: float
) -> float:
    """A finite number within [low, high]: ``inf`` and ``nan`` are TOML floats too,
    and either would pass a plain ``< 0`` check (``nan`` fails every comparison)."""
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ModelLoadError(
            f"model.toml: [{section}] {key} must be a finite number from {low:g} to {high:g}"
        )
    return float(value)


def _flag(table: dict[str, Any], key: str, section: str) -> bool:
    """true or false, true when absent: a string such as "false" or "no" would be
    true to bool(), and a typo must not silently turn a thing on."""
    value = table.get(key, True)
    if not isinstance(value, bool):
        raise ModelLoadError(f"model.toml: [{section}] {key} must be true or false")
    return value


def _batching(value: Any) -> BatchingConfig:
    table = _table(value, "batching", {"max_batch_size", "max_delay_ms", "max_queue", "enabled"})
    defaults = BatchingConfig()
    return BatchingConfig(
        max_batch_size=int(
            _number(table, "max_batch_size", "batching", defaults.max_batch_size, 1, MAX_COUNT)
        ),
        max_delay_ms=_number(
            table, "max_delay_ms", "batching", defaults.max_delay_ms, 0, MAX_DELAY_MS
        ),
        max_queue=int(_number(table, "max_queue", "batching", defaults.max_queue, 1, MAX_COUNT)),
        enabled=_flag(table, "enabled", "batching"),
    )


def _warmup(value: Any) -> WarmupConfig:
    table = _table(value, "warmup", {"enabled", "inputs"})
    inputs = table.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        raise ModelLoadError("model.toml: [warmup] inputs must be a table of input name = data")
    return WarmupConfig(enabled=_flag(table, "enabled", "warmup"), inputs=inputs)


def _version_policy(value: Any) -> VersionPolicy:
    table = _table(value, "version_policy", {"latest", "versions"})
    if "versions" in table:
        versions = table["versions"]
        if not isinstance(versions, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions
        ):
            raise ModelLoadError("model.toml: [version_policy] versions must be positive ints")
        return VersionPolicy(latest=None, versions=tuple(versions))
    latest = table.get("latest", 1)
    if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:
        raise ModelLoadError("model.toml: [version_policy] latest must be an int >= 1")
    return VersionPolicy(latest=latest)


def _memory_mb(raw: dict[str, Any]) -> float | None:
    value = raw.get("memory_mb")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_MEMORY_MB
    ):
        raise ModelLoadError(
            f"model.toml: 'memory_mb' must be a finite number over 0, at most {MAX_MEMORY_MB:g}"
        )
    return float(value)


def _logging(value: Any) -> LoggingConfig:
    keys = {"sample", "redact", "max_elements", "drift", "reference_requests"}
    table = _table(value, "logging", keys | {"max_features", "drift_window"})
    sample = None
    if "sample" in table:
        sample = _number(table, "sample", "logging", 0.0, 0, 1)
    redact = table.get("redact", [])
    if not isinstance(redact, list) or not all(isinstance(n, str) for n in redact):
        raise ModelLoadError("model.toml: [logging] redact must be a list of input names")
    return LoggingConfig(
        sample=sample,
        redact=tuple(redact),
        max_elements=int(_number(table, "max_elements", "logging", 64, 0, MAX_COUNT)),
        drift=_flag(table, "drift", "logging"),
        reference_requests=int(
            _number(table, "reference_requests", "logging", 1000, 10, MAX_COUNT)
        ),
        max_features=int(_number(table, "max_features", "logging", 32, 1, 1024)),
        drift_window=int(_number(table, "drift_window", "logging", 2000, 10, MAX_COUNT)),
    )


_ROLLOUT_KEYS = {
    "bake_s",
    "window_s",
    "max_error_ratio",
    "min_requests",
    "strategy",
    "shadow_fraction",
    "tolerance",
    "min_compared",
    "min_agreement",
    "max_latency_ratio",
    "max_shadow_s",
    "canary_percent",
    "step_s",
    "canary_key",
}
_HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}")  # an HTTP field name (RFC 9110), lower


def _rollout(value: Any) -> RolloutConfig:
    table = _table(value, "rollout", _ROLLOUT_KEYS)
    d = RolloutConfig()
    strategy = table.get("strategy", d.strategy)
    if strategy not in STRATEGIES:
        raise ModelLoadError(f"model.toml: [rollout] strategy must be one of {list(STRATEGIES)}")
    key = table.get("canary_key", d.canary_key)
    if not isinstance(key, str) or not _HEADER.fullmatch(key.lower()):
        raise ModelLoadError("model.toml: [rollout] canary_key must be an HTTP header name")
    return RolloutConfig(
        bake_s=_number(table, "bake_s", "rollout", d.bake_s, 0, MAX_SECONDS),
        window_s=_number(table, "window_s", "rollout", d.window_s, 0.1, MAX_SECONDS),
        max_error_ratio=_number(table, "max_error_ratio", "rollout", d.max_error_ratio, 0, 1),
        min_requests=int(_number(table, "min_requests", "rollout", d.min_requests, 1, MAX_COUNT)),
        strategy=strategy,
        shadow_fraction=_number(table, "shadow_fraction", "rollout", d.shadow_fraction, 0.001, 1),
        tolerance=_number(table, "tolerance", "rollout", d.tolerance, 0, 1e6),
        min_compared=int(_number(table, "min_compared", "rollout", d.min_compared, 1, MAX_COUNT)),
        min_agreement=_number(table, "min_agreement", "rollout", d.min_agreement, 0, 1),
        max_latency_ratio=_number(
            table, "max_latency_ratio", "rollout", d.max_latency_ratio, 0.01, 1000
        ),
        max_shadow_s=_number(table, "max_shadow_s", "rollout", d.max_shadow_s, 1, MAX_SECONDS),
        canary_percent=_steps(table.get("canary_percent", list(d.canary_percent))),
        step_s=_number(table, "step_s", "rollout", d.step_s, 0.1, MAX_SECONDS),
        canary_key=key.lower(),
    )


def _steps(value: Any) -> tuple[float, ...]:
    """The canary's shares: rising percentages over 0, the last one 100."""
    if (
        not isinstance(value, list)
        or not value
        or len(value) > 20
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 100 for v in value
        )
        or any(b <= a for a, b in itertools.pairwise(value))
        or value[-1] != 100
    ):
        raise ModelLoadError(
            "model.toml: [rollout] canary_percent must be rising percentages over 0 "
            "ending at 100, such as [10, 50, 100]"
        )
    return tuple(float(v) for v in value)
