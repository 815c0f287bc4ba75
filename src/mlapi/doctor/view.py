"""One shape for a merged compose configuration, whichever reader made it: the JSON
of ``docker compose config`` (long forms, sizes in bytes, durations like ``1m0s``) or
doctor's own merge (the forms people write: ``"127.0.0.1:8000:8000"``, ``1g``,
``60s``). The checks read only this, so both readers give the same findings."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlapi.doctor.merge import as_mapping
from mlapi.errors import ConfigError

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)i?b?", re.IGNORECASE)
_SIZE_BYTES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def seconds(value: Any) -> float | None:
    """A compose duration (``1m30s``, ``500ms``, ``60``) in seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"'{text[:32]}' is not a duration (such as 30s or 1m30s)")
    return sum(float(number) * _DURATION_S[unit] for number, unit in parts)


def size_bytes(value: Any) -> int | None:
    """A compose size (``1g``, ``512m``, ``1073741824``) in bytes."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.fullmatch(str(value).strip())
    if match is None:
        raise ConfigError(f"'{str(value)[:32]}' is not a size (such as 512m or 2g)")
    return int(float(match.group(1)) * _SIZE_BYTES[match.group(2).lower()])


@dataclass(frozen=True)
class Port:
    host_ip: str  # "" when on every interface
    published: str
    target: int


@dataclass(frozen=True)
class Mount:
    type: str  # volume, bind, tmpfs
    source: str | None  # volume key, or an absolute host path; None when anonymous
    target: str


@dataclass(frozen=True)
class Health:
    test: tuple[str, ...]
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float
    disabled: bool


@dataclass
class Service:
    name: str
    image: str | None
    build_target: str | None
    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    environment: dict[str, str | None]
    health: Health | None
    restart: str | None
    ports: tuple[Port, ...]
    mounts: tuple[Mount, ...]
    secrets: tuple[str, ...]
    cpus: float | None
    memory: int | None
    cpus_reservation: float | None
    memory_reservation: int | None
    stop_grace_s: float | None
    profiles: tuple[str, ...]

    def env(self, name: str) -> str | None:
        value = self.environment.get(name)
        return None if value is None else str(value)


@dataclass(frozen=True)
class Secret:
    file: Path | None
    environment: str | None


@dataclass
class Deployment:
    project_dir: Path
    files: tuple[Path, ...]
    services: dict[str, Service] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()  # the top-level volume keys that services mount
    secrets: dict[str, Secret] = field(default_factory=dict)  # those services read


def deployment(data: dict[str, Any], project_dir: Path, files: tuple[Path, ...]) -> Deployment:
    result = Deployment(project_dir, files)
    for name, raw in sorted((data.get("services") or {}).items()):  # Compose's order
        result.services[name] = _service(name, raw or {}, project_dir)
    # Only what a service uses, as Compose prints it (it drops the rest).
    mounted = {m.source for s in result.services.values() for m in s.mounts}
    result.volumes = tuple(sorted(key for key in data.get("volumes") or {} if key in mounted))
    used = {name for s in result.services.values() for name in s.secrets}
    for key, raw in (data.get("secrets") or {}).items():
        if key not in used:
            continue
        raw = raw or {}
        file = raw.get("file")
        result.secrets[key] = Secret(
            _absolute(project_dir, str(file)) if file else None, raw.get("environment")
        )
    return result


def _service(name: str, raw: dict[str, Any], project_dir: Path) -> Service:
    build = raw.get("build")
    resources = ((raw.get("deploy") or {}).get("resources")) or {}
    limits = resources.get("limits") or {}
    reservations = resources.get("reservations") or {}
    profiles = raw.get("profiles") or ()
    return Service(
        name=name,
        image=raw.get("image"),
        build_target=build.get("target") if isinstance(build, dict) else None,
        command=_words(raw.get("command")),
        entrypoint=_words(raw.get("entrypoint")),
        environment={
            k: None if v is None else _text(v)
            for k, v in as_mapping(raw.get("environment")).items()
        },
        health=_health(raw.get("healthcheck")),
        restart=_text(raw["restart"]) if raw.get("restart") is not None else None,
        ports=tuple(_port(item) for item in raw.get("ports") or ()),
        mounts=tuple(_mount(item, project_dir) for item in raw.get("volumes") or ()),
        secrets=tuple(
            str(item.get("source") if isinstance(item, dict) else item)
            for item in raw.get("secrets") or ()
        ),
        cpus=_float(limits.get("cpus")),
        memory=size_bytes(limits.get("memory")),
        cpus_reservation=_float(reservations.get("cpus")),
        memory_reservation=size_bytes(reservations.get("memory")),
        stop_grace_s=seconds(raw.get("stop_grace_period")),
        profiles=tuple(str(item) for item in profiles),
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:  # 'nan' and 'inf' parse as floats
        raise ConfigError(f"'{str(value)[:32]}' is not a number of CPUs")
    return number


def whole(text: str) -> int | None:
    """A whole number written in ASCII digits, or None: str.isdigit() also takes
    '²', which int() then refuses with a traceback."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _words(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(str(item) for item in value)


def _health(raw: Any) -> Health | None:
    if not raw:
        return None
    test = raw.get("test")
    words = (test,) if isinstance(test, str) else tuple(str(item) for item in test or ())
    disabled = bool(raw.get("disable")) or words[:1] == ("NONE",)
    return Health(
        test=words,
        interval_s=seconds(raw.get("interval")) or 30.0,
        timeout_s=seconds(raw.get("timeout")) or 30.0,
        retries=int(raw.get("retries") or 3),
        start_period_s=seconds(raw.get("start_period")) or 0.0,
        disabled=disabled,
    )


def _port(item: Any) -> Port:
    if isinstance(item, dict):
        return Port(
            str(item.get("host_ip") or ""),
            str(item.get("published") or ""),
            int(item.get("target") or 0),
        )
    text = str(item).split("/")[0]
    if text.startswith("["):  # [::1]:8000:8000
        host, _, rest = text[1:].partition("]:")
        published, _, target = rest.rpartition(":")
        return Port(host, published, int(target))
    parts = text.split(":")
    if len(parts) == 1:
        return Port("", "", int(parts[0].split("-")[0]))
    if len(parts) == 2:
        return Port("", parts[0], int(parts[1].split("-")[0]))
    return Port(":".join(parts[:-2]), parts[-2], int(parts[-1].split("-")[0]))


def _mount(item: Any, project_dir: Path) -> Mount:
    if isinstance(item, dict):
        kind = str(item.get("type") or "volume")
        source = item.get("source")
        if kind == "bind" and source:
            source = str(_absolute(project_dir, str(source)))
        return Mount(kind, str(source) if source else None, str(item.get("target")))
    parts = str(item).split(":")
    if len(parts) == 1:
        return Mount("volume", None, parts[0])
    source, target = parts[0], parts[1]
    if source.startswith((".", "/", "~")):
        return Mount("bind", str(_absolute(project_dir, source)), target)
    return Mount("volume", source, target)


def _absolute(project_dir: Path, path: str) -> Path:
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else (project_dir / expanded).resolve()
