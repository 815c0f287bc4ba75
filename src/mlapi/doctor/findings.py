"""What doctor reports: findings (an id, a severity, the service, a message and the
fix) and where in the files a key was set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlapi.doctor.merge import load_yaml
from mlapi.doctor.view import Deployment, Service
from mlapi.errors import ConfigError

Severity = Literal["fail", "warn", "ok"]
MIB = 1 << 20
API_SERVICE_HINTS = ("mlapi", "ml-api", "ml_api")


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    service: str | None
    message: str
    fix: str | None = None
    where: str | None = None  # "file: services.x.key", when known

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "service": self.service,
            "message": self.message if not self.where else f"{self.message} ({self.where})",
            "fix": self.fix,
        }


class Sources:
    """The compose files as written, to say which one sets a key, and to see what
    interpolation hides (a literal secret, a volume name built from a variable)."""

    def __init__(self, files: tuple[Path, ...]) -> None:
        self.files = files
        self.raw: list[tuple[Path, dict[str, Any]]] = []
        for path in files:
            try:
                self.raw.append((path, load_yaml(path)))
            except ConfigError:
                continue

    def value(self, *keys: str) -> tuple[Path, Any] | None:
        """(the last file that sets the key path, its value as written)."""
        found = None
        for path, data in self.raw:
            node: Any = data
            for key in keys:
                node = node.get(key) if isinstance(node, dict) else None
                if node is None:
                    break
            if node is not None:
                found = (path, node)
        return found

    def where(self, *keys: str) -> str | None:
        hit = self.value(*keys)
        return f"{hit[0].name}: {'.'.join(keys)}" if hit else None


def api_services(deployment: Deployment) -> list[Service]:
    """The services that run the model server: an ml-api image, or `mlapi` in the
    command or health check, and not a one-shot `mlapi <other command>`."""
    found = []
    for service in deployment.services.values():
        words = " ".join((*(service.entrypoint or ()), *(service.command or ())))
        health = " ".join(service.health.test) if service.health else ""
        image = (service.image or "").lower()
        ours = any(hint in image for hint in API_SERVICE_HINTS) or "mlapi" in words + health
        one_shot = bool(service.command) and "serve" not in (service.command or ())
        if ours and not one_shot:
            found.append(service)
    return found


def mib(value: float) -> str:
    return f"{value / MIB:.0f} MiB"
