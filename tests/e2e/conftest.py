"""The compose files, unchanged, on a real Docker engine. Each stack runs from a
copy of the project (so tests can add a secret file or edit src/ without touching
the working tree), under a unique project name, on unusual loopback ports. Only the
base image, the proxy image and pip's CA bundle come from variables, as a user
behind a proxy with a private registry would set them.

scripts/test-engine.sh prepares the engine and the local images (make test runs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = [
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "docker-compose.yml",
    "docker-compose.override.yml",
    "docker-compose.prod.yml",
    "docker-compose.ci.yml",
    "docker-compose.gpu.yml",
    "docker-compose.host-models.yml",
    "docker-compose.keys.yml",
    "docker-stack.yml",
    "docker-stack.keys.yml",
    "src",
    "deploy",
    "secrets/README.md",
]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def docker(
    *args: str,
    timeout_s: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class Stack:
    folder: Path
    project: str
    files: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.env["API_PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(
        self, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        file_args = [arg for name in self.files for arg in ("-f", name)]
        return docker(
            "compose",
            "-p",
            self.project,
            *file_args,
            *args,
            timeout_s=timeout_s,
            check=check,
            env={**os.environ, **self.env},
            cwd=self.folder,
        )

    def compose_input(self, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
        """`docker compose ... ARGS` with ``data`` on its stdin (a tar for `mlapi models
        publish -`, say); the result whatever its exit code."""
        file_args = [arg for name in self.files for arg in ("-f", name)]
        return subprocess.run(
            ["docker", "compose", "-p", self.project, *file_args, *args],
            input=data,
            capture_output=True,
            timeout=300,
            env={**os.environ, **self.env},
            cwd=self.folder,
        )

    def containers(self, service: str) -> list[dict[str, Any]]:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        if not ids:
            return []
        return list(json.loads(docker("inspect", *ids).stdout))

    def down(self) -> None:
        self.compose(
            "--profile",
            "*",
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "5",
            check=False,
            timeout_s=180,
        )


def copy_project(target: Path) -> Path:
    for name in PROJECT_FILES:
        source = ROOT / name
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination)
    return target


@pytest.fixture(scope="session")
def engine() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise AssertionError("no Docker engine: run scripts/test-engine.sh first (make test does)")


def make_stack(tmp: Path, files: list[str]) -> Stack:
    run_id = uuid.uuid4().hex[:8]
    env = {
        "PYTHON_IMAGE": os.environ.get("MLAPI_TEST_BASE_IMAGE", "mlapi-base:bookworm"),
        "PROXY_IMAGE": os.environ.get("MLAPI_TEST_NGINX_IMAGE", "mlapi-nginx:bookworm"),
        "PIP_CA_FILE": CA_BUNDLE if Path(CA_BUNDLE).exists() else "/dev/null",
        "API_PORT": str(free_port()),
        "API_GRPC_PORT": str(free_port()),
        "DEBUG_PORT": str(free_port()),
        "MLAPI_TAG": "e2e",
        "ML_NETWORK_SUBNET": f"172.29.{int(run_id[:2], 16)}.0/24",
        "ML_API_START_PERIOD": "30s",
        "COMPOSE_PROGRESS": "quiet",
    }
    return Stack(copy_project(tmp / run_id), f"mlapi-e2e-{run_id}", files, env)


@pytest.fixture
def stack_factory(engine: None, tmp_path: Path) -> Iterator[list[Stack]]:
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        stack.down()


def write_api_key(stack: Stack) -> str:
    """A fresh API key in the stack's secret file (owner 1000, mode 0400): the key."""
    key = "e2e-" + os.urandom(16).hex()
    secret = stack.folder / "secrets" / "api_key.txt"
    secret.write_text(key + "\n")
    os.chown(secret, 1000, 1000)
    secret.chmod(0o400)
    return key


def wait_until(
    check: object, timeout_s: float, what: str, state: Callable[[], object] | None = None
) -> None:
    """Until ``check()`` is true; else an AssertionError that says what was awaited
    and, with ``state``, what there was instead at the end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    found = f"; found {state()}" if state is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{found}")
