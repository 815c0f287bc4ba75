"""``mlapi doctor``: audit a compose deployment against the guide and size it from
measurement. ``run`` reads the merged configuration (``source``), measures the
models the API service will serve (``measure``, in child processes held to its CPU
limit), runs the checks (``checks_sizing``, ``checks_hygiene``) and suggests the
values (``sizing``) that ``report`` prints and writes to an env file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlapi.doctor import checks_hygiene as hygiene
from mlapi.doctor import checks_sizing
from mlapi.doctor import measure as measuring
from mlapi.doctor import source as compose_source
from mlapi.doctor.findings import Finding, Sources, api_services
from mlapi.doctor.measure import Measurements
from mlapi.doctor.sizing import Sizing, host_memory_bytes, size
from mlapi.doctor.view import Deployment, Service, whole
from mlapi.errors import ConfigError


@dataclass(frozen=True)
class Options:
    files: tuple[Path, ...] = ()  # none: what `docker compose` reads in project_dir
    project_dir: Path = Path(".")
    model_path: Path | None = None  # none: the bundled default models
    env_file: Path | None = None
    use_compose: bool | None = None  # none: Compose when installed
    measure: bool = True
    timeout_s: float = 600.0


@dataclass
class Report:
    files: tuple[Path, ...]
    merged_by: str
    production: bool
    service: str
    findings: list[Finding] = field(default_factory=list)
    measured: Measurements | None = None
    sizing: Sizing | None = None

    @property
    def failed(self) -> bool:
        return any(finding.severity == "fail" for finding in self.findings)


def is_production(files: tuple[Path, ...]) -> bool:
    """Production is a merge that names a production file (docker-compose.prod.yml)."""
    return any("prod" in path.name.lower() for path in files[1:] or files)


def run(options: Options, environ: Mapping[str, str]) -> Report:
    """Read the files, measure the models the API service serves, check."""
    deployment, merged_by = read(options, environ)
    measured = None
    if options.measure:
        from mlapi.settings import DEFAULT_MODEL_PATH

        main = model_servers(deployment)[0]
        pinned = (main.env("MODEL_VERSION") or "").strip().lstrip("v")
        measured = measuring.measure(
            options.model_path or DEFAULT_MODEL_PATH,
            whole(pinned),
            main.cpus,
            checks_sizing.workers_of(main),
            main.environment,
            options.timeout_s,
        )
    return audit(deployment, merged_by, measured, host_memory_bytes(), options.env_file)


def read(options: Options, environ: Mapping[str, str]) -> tuple[Deployment, str]:
    """The merged configuration, and what merged it."""
    files = options.files or tuple(compose_source.default_files(options.project_dir))
    use_compose = (
        compose_source.compose_available() if options.use_compose is None else options.use_compose
    )
    deployment = compose_source.read(list(files), options.env_file, environ, use_compose)
    return deployment, "docker compose" if use_compose else "mlapi"


def model_servers(deployment: Deployment) -> list[Service]:
    """The services that run the model server, the first being the one measured."""
    api = api_services(deployment)
    if not api:
        raise ConfigError("no service in these files runs the model server (mlapi serve)")
    return api


def audit(
    deployment: Deployment,
    merged_by: str,
    measured: Measurements | None,
    host_bytes: int,
    env_file: Path | None = None,
) -> Report:
    """Every check on one merged configuration and (when given) the measurements."""
    api = model_servers(deployment)
    main = api[0]
    report = Report(
        deployment.files, merged_by, is_production(deployment.files), main.name, measured=measured
    )
    if measured is not None:
        report.sizing = size(measured, main.cpus, host_bytes)
    report.findings = _findings(deployment, api, env_file, report, host_bytes)
    return report


def _findings(
    deployment: Deployment,
    api: list[Service],
    env_file: Path | None,
    report: Report,
    host_bytes: int,
) -> list[Finding]:
    measured, sized = report.measured, report.sizing
    sources = Sources(deployment.files)
    found: list[Finding] = []
    for service in api:
        found += checks_sizing.health(
            service, sources, measured, sized.start_period_s if sized else 0
        )
        found += checks_sizing.memory(
            service, sources, measured, host_bytes, sized.suggested_bytes if sized else 0
        )
        found += checks_sizing.cpu(service, sources)
        found += hygiene.restart(service, sources)
        found += hygiene.stop_grace(service, sources)
    found += hygiene.ports(deployment, sources)
    found += hygiene.literal_secrets(deployment, sources)
    files = [secret.file for secret in deployment.secrets.values() if secret.file is not None]
    found += hygiene.env_file(deployment.project_dir, env_file, files)
    found += hygiene.secret_files(deployment)
    found += hygiene.volumes(deployment, api, sources)
    if report.production:
        found += hygiene.production(deployment, api, sources)
    for model in measured.failed if measured else []:
        found.append(
            Finding(
                "model.failed",
                "fail",
                report.service,
                f"model {model.name} v{model.version} does not load: {model.error}",
                "mlapi models validate MODEL_PATH shows the same; fix the model folder",
            )
        )
    return found
