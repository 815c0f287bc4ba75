"""Which compose files a deployment is, and their merged configuration: from
``docker compose config`` when Compose is installed (what Compose itself will run),
else from doctor's own merge (same rules, same result)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from mlapi.doctor import merge
from mlapi.doctor.interpolate import read_env_file
from mlapi.doctor.view import Deployment, deployment
from mlapi.errors import ConfigError

_BASE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


def default_files(folder: Path) -> list[Path]:
    """What a bare ``docker compose`` reads in ``folder``: the base file and, when
    present, its override."""
    for name in _BASE_NAMES:
        base = folder / name
        if base.is_file():
            stem, suffix = name.rsplit(".", 1)
            override = folder / f"{stem}.override.{suffix}"
            return [base, override] if override.is_file() else [base]
    raise ConfigError(f"no compose file in {folder} (looked for {', '.join(_BASE_NAMES)})")


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


def variables(
    project_dir: Path, env_file: Path | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """What interpolation reads: the env file (``.env`` in the project folder unless
    another is given), overridden by the process environment, as Compose does."""
    path = env_file if env_file is not None else project_dir / ".env"
    values: dict[str, str] = {}
    if path.is_file():
        values.update(read_env_file(path))
    elif env_file is not None:
        raise ConfigError(f"--env-file {env_file}: no such file")
    values.update(environ)
    return values


def read(
    files: list[Path],
    env_file: Path | None,
    environ: Mapping[str, str],
    use_compose: bool,
) -> Deployment:
    for path in files:
        if not path.is_file():
            raise ConfigError(f"-f {path}: no such file")
    project_dir = files[0].resolve().parent
    if use_compose:
        data = _compose_config(files, env_file, environ, project_dir)
    else:
        data = merge.merged(
            [path.resolve() for path in files], variables(project_dir, env_file, environ)
        )
    return deployment(data, project_dir, tuple(path.resolve() for path in files))


def _compose_config(
    files: list[Path], env_file: Path | None, environ: Mapping[str, str], project_dir: Path
) -> dict[str, object]:
    args = ["docker", "compose", "--project-directory", str(project_dir)]
    for path in files:
        args += ["-f", str(path.resolve())]
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError(f"--env-file {env_file}: no such file")
        args += ["--env-file", str(env_file.resolve())]
    args += ["--profile", "*", "config", "--format", "json"]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env=dict(environ), check=False
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ConfigError(f"docker compose config: {lines[-1] if lines else 'failed'}")
    data = json.loads(result.stdout)
    if not isinstance(data, dict):
        raise ConfigError("docker compose config gave no configuration")
    return data
