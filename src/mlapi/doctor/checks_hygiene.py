"""The checks that need no measurement: restart policy, published ports, secrets,
production-only rules, the stop grace period, volume names."""

from __future__ import annotations

import math
import re
import stat
import subprocess
from pathlib import Path

from mlapi.doctor.findings import Finding, Sources
from mlapi.doctor.interpolate import read_env_file
from mlapi.doctor.view import Deployment, Service
from mlapi.errors import ConfigError

_GOOD_RESTART = ("always", "unless-stopped", "on-failure")
_SECRET_NAME = re.compile(
    r"(^|_)(API_?KEY|ACCESS_KEY|SECRET_KEY|PRIVATE_KEY|ADMIN_KEY|PASSWORD|PASSWD|TOKEN"
    r"|SECRET|CREDENTIALS?)$"
)
_EVERY_INTERFACE = ("", "0.0.0.0", "::", "[::]")
_MONITORING = ("prometheus", "grafana", "alertmanager", "node-exporter", "cadvisor")
_GENERIC_VOLUME = re.compile(r"(data|vol(ume)?|storage|cache|tmp|files?|v?\d*)", re.IGNORECASE)
_TRUE = ("1", "true", "yes", "on")
# Defaults of the server when the environment does not say (settings.py).
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_DRAIN_GRACE_S = 2.0
DEFAULT_STOP_GRACE_S = 10.0  # Docker's own


def is_secret_name(name: str) -> bool:
    return not name.upper().endswith("_FILE") and bool(_SECRET_NAME.search(name.upper()))


def restart(service: Service, sources: Sources) -> list[Finding]:
    if service.restart in _GOOD_RESTART or (service.restart or "").startswith("on-failure:"):
        return []
    return [
        Finding(
            "restart.policy",
            "fail",
            service.name,
            f"restart policy '{service.restart or 'no'}': a crashed server stays down",
            "restart: always",
            sources.where("services", service.name, "restart"),
        )
    ]


def ports(deployment: Deployment, sources: Sources) -> list[Finding]:
    findings = []
    for service in deployment.services.values():
        for port in service.ports:
            # a bare "8000" publishes too, on a random host port of every interface
            if port.host_ip in _EVERY_INTERFACE:
                findings.append(
                    Finding(
                        "ports.all_interfaces",
                        "fail",
                        service.name,
                        f"port {port.published}->{port.target} is published on every "
                        "interface: reachable from the network, past the host's firewall",
                        f'"127.0.0.1:{port.published}:{port.target}"',
                        sources.where("services", service.name, "ports"),
                    )
                )
    return findings


def literal_secrets(deployment: Deployment, sources: Sources) -> list[Finding]:
    """A key, password, token or secret written as a value in a compose file."""
    findings = []
    for path, data in sources.raw:
        for name, service in (data.get("services") or {}).items():
            environment = (service or {}).get("environment") if isinstance(service, dict) else None
            items = (
                environment.items()
                if isinstance(environment, dict)
                else (str(e).partition("=")[::2] for e in environment or ())
            )
            for key, value in items:
                if is_secret_name(str(key)) and value and "${" not in str(value):
                    findings.append(
                        Finding(
                            "secrets.literal",
                            "fail",
                            str(name),
                            f"{key} is written in the compose file: it ends up in the "
                            "repository and in `docker inspect`",
                            f"a Docker secret read from /run/secrets (set {key}_FILE)",
                            f"{path.name}: services.{name}.environment.{key}",
                        )
                    )
    return findings


def env_file(project_dir: Path, env_path: Path | None, secret_files: list[Path]) -> list[Finding]:
    """Secrets in a committed ``.env``; ``.env`` or a secret file of the project not
    ignored by git."""
    path = env_path or project_dir / ".env"
    findings = []
    tracked = _git(project_dir, "ls-files", "--error-unmatch", str(path)) == 0
    if tracked and path.is_file():
        try:
            values = read_env_file(path)
        except ConfigError:
            values = {}
        for key, value in values.items():
            if is_secret_name(key) and value:
                findings.append(
                    Finding(
                        "secrets.env_committed",
                        "fail",
                        None,
                        f"{key} has a value in {path.name}, which git tracks",
                        f"git rm --cached {path.name}; rotate {key}; use a Docker secret",
                    )
                )
    inside = [p for p in secret_files if project_dir in p.parents]
    for probe in (project_dir / ".env", *inside):
        if _git(project_dir, "check-ignore", "-q", str(probe)) == 1:
            shown = probe.relative_to(project_dir)
            findings.append(
                Finding(
                    "secrets.not_ignored",
                    "fail",
                    None,
                    f"git does not ignore {shown}: a secret put there gets committed",
                    f"add '{shown}' (or its folder) to .gitignore",
                )
            )
    return findings


def _git(folder: Path, *args: str) -> int | None:
    """git's exit code in ``folder``; None when git or a repository is missing."""
    try:
        inside = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if inside.returncode != 0:
            return None
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, timeout=30, check=False
        ).returncode
    except (OSError, subprocess.TimeoutExpired):
        return None


def secret_files(deployment: Deployment) -> list[Finding]:
    findings = []
    for service in deployment.services.values():
        for name in service.secrets:
            secret = deployment.secrets.get(name)
            if secret is None or secret.file is None:
                continue
            profile = f" ({', '.join(service.profiles)} profile)" if service.profiles else ""
            try:
                mode = secret.file.stat()
            except OSError:
                findings.append(
                    Finding(
                        "secrets.file_missing",
                        "warn",
                        service.name,
                        f"secret '{name}' file {secret.file} does not exist: "
                        f"`up` will fail{profile}",
                        "make it as secrets/README.md says (owner 1000, mode 0400)",
                    )
                )
                continue
            if stat.S_ISREG(mode.st_mode) and mode.st_mode & stat.S_IROTH:
                findings.append(
                    Finding(
                        "secrets.file_readable",
                        "fail",
                        service.name,
                        f"secret '{name}' file {secret.file} can be read by every user of the host",
                        f"chmod 0400 {secret.file}",
                    )
                )
    return findings


def production(deployment: Deployment, api: list[Service], sources: Sources) -> list[Finding]:
    findings = []
    for service in api:
        name = service.name
        for mount in service.mounts:
            if mount.type == "bind":
                findings.append(
                    Finding(
                        "prod.bind_mount",
                        "fail",
                        name,
                        f"bind mount {mount.source} -> {mount.target} in production: the "
                        "container runs what is on the host, not what was built",
                        "a named volume, or bake the files into the image",
                        sources.where("services", name, "volumes"),
                    )
                )
        if service.build_target and service.build_target != "production":
            findings.append(
                Finding(
                    "prod.dev_target",
                    "fail",
                    name,
                    f"built from the '{service.build_target}' target in production",
                    "build.target: production",
                    sources.where("services", name, "build", "target"),
                )
            )
        for variable in ("DEBUG", "RELOAD"):
            if (service.env(variable) or "").strip().lower() in _TRUE:
                findings.append(
                    Finding(
                        "prod.debug",
                        "fail",
                        name,
                        f"{variable} is on in production",
                        f"remove {variable} (it defaults to false)",
                        sources.where("services", name, "environment", variable),
                    )
                )
    for service in deployment.services.values():
        image = service.image or ""
        monitored = any(word in image for word in _MONITORING)
        if (service in api or monitored) and _unpinned(image):
            findings.append(
                Finding(
                    "prod.image_unpinned",
                    "warn",
                    service.name,
                    f"image {image} is not pinned to a version in production",
                    "a version tag (MLAPI_TAG=1.4.2) or a digest",
                    sources.where("services", service.name, "image"),
                )
            )
    return findings


def _unpinned(image: str) -> bool:
    if "@sha256:" in image:
        return False
    last = image.rsplit("/", 1)[-1]
    return ":" not in last or last.endswith(":latest")


def stop_grace(service: Service, sources: Sources) -> list[Finding]:
    shutdown = _number(service.env("MLAPI_SHUTDOWN_TIMEOUT_S"), DEFAULT_SHUTDOWN_TIMEOUT_S)
    grace = _number(service.env("MLAPI_DRAIN_GRACE_S"), DEFAULT_DRAIN_GRACE_S)
    stop = service.stop_grace_s if service.stop_grace_s is not None else DEFAULT_STOP_GRACE_S
    if stop >= shutdown + grace:
        return []
    return [
        Finding(
            "stop_grace.short",
            "fail",
            service.name,
            f"stop_grace_period {stop:g}s < drain grace {grace:g}s + shutdown timeout "
            f"{shutdown:g}s: Docker kills the server with requests still in flight",
            f"stop_grace_period: {int(shutdown + grace) + 5}s",
            sources.where("services", service.name, "stop_grace_period"),
        )
    ]


def _number(text: str | None, default: float) -> float:
    try:
        number = float(text) if text else default
    except ValueError:
        return default
    return number if math.isfinite(number) else default


def volumes(deployment: Deployment, api: list[Service], sources: Sources) -> list[Finding]:
    findings = []
    for service in deployment.services.values():
        for mount in service.mounts:
            if mount.type != "volume":
                continue
            if mount.source is None or _GENERIC_VOLUME.fullmatch(mount.source):
                what = "an anonymous volume" if mount.source is None else f"volume '{mount.source}'"
                findings.append(
                    Finding(
                        "volumes.name",
                        "warn",
                        service.name,
                        f"{what} at {mount.target}: no name that says what it holds",
                        "a named volume such as ml_models_v1 or ml_logs",
                        sources.where("services", service.name, "volumes"),
                    )
                )
    for service in api:
        cache_dir = service.env("MLAPI_CACHE_DIR")
        cache = next((m for m in service.mounts if m.target == cache_dir), None)
        if cache is None or cache.type != "volume" or cache.source is None:
            continue
        mount = cache
        volume_key: str = cache.source
        written = sources.value("volumes", volume_key, "name")
        if written is None or "MODEL_VERSION" not in str(written[1]):
            findings.append(
                Finding(
                    "volumes.cache_unkeyed",
                    "warn",
                    service.name,
                    f"the model cache volume '{mount.source}' is not named by MODEL_VERSION: "
                    "every version's cache piles up in one volume",
                    f"volumes: {{{mount.source}: {{name: {mount.source}_${{MODEL_VERSION:-1}}}}}}",
                    sources.where("volumes", volume_key),
                )
            )
    return findings
