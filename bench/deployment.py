"""The deployment's own figures, on a Docker engine (not a test): the production
image's size, default and scikit-learn variants, and the time from
`docker compose up -d` (image built) to the container healthy.

Builds the `production` target with `docker compose build` (the base image from
PYTHON_IMAGE, python:3.12-slim unless set; here the debootstrapped
mlapi-base:bookworm that scripts/test-engine.sh makes is the closest equivalent)
and measures what the Dockerfile adds above the base (the sum of `docker history`
layers above it, i.e. image size minus base size) and the whole image.

    PYTHON_IMAGE=mlapi-base:bookworm .venv/bin/python bench/deployment.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CA = "/etc/ssl/certs/ca-certificates.crt"
PROJECT = "mlapi-bench"


def _docker(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    ).stdout


def _size(image: str) -> int:
    return int(_docker("image", "inspect", "-f", "{{.Size}}", image))


def engine_base() -> str | None:
    """The base image to build on, or None when no engine answers or no base is here."""
    if not shutil.which("docker"):
        return None
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return None
    for image in filter(
        None, (os.environ.get("PYTHON_IMAGE"), "python:3.12-slim", "mlapi-base:bookworm")
    ):
        if (
            subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
            == 0
        ):
            return image
    return None


def _env(base: str, extras: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHON_IMAGE": base,
        "MLAPI_EXTRAS": extras,
        "MLAPI_TAG": f"size-{extras or 'default'}",
        "PIP_CA_FILE": CA if Path(CA).exists() else "/dev/null",
        "COMPOSE_PROGRESS": "quiet",
        "API_PORT": "0",  # any free port: nothing here connects to it
    }


def _compose(env: dict[str, str], *args: str) -> str:
    return _docker("compose", "-p", PROJECT, "-f", "docker-compose.yml", *args, env=env)


def up_to_healthy_s(env: dict[str, str], timeout_s: float = 60) -> float:
    """`docker compose up -d` of the built image until its health check passes."""
    try:
        started = time.monotonic()
        _compose(env, "up", "-d", "ml-api")
        container = _compose(env, "ps", "-q", "ml-api").split()[0]
        while time.monotonic() - started < timeout_s:
            (state,) = json.loads(_docker("inspect", container))
            if state["State"].get("Health", {}).get("Status") == "healthy":
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"not healthy within {timeout_s:g} s")
    finally:
        _compose(env, "down", "-v", "--remove-orphans")


def measure(base: str) -> dict[str, float]:
    sizes: dict[str, float] = {"base_mb": _size(base) / 1e6}
    for extras in ("", "sklearn"):
        env = _env(base, extras)
        _compose(env, "build", "ml-api")
        whole = _size(f"ml-api:{env['MLAPI_TAG']}")
        key = "image" if not extras else "sklearn"
        sizes[f"{key}_mb"] = whole / 1e6
        sizes[f"{key}_added_mb"] = (whole - _size(base)) / 1e6
    sizes["up_to_healthy_s"] = up_to_healthy_s(_env(base, ""))
    return sizes


def main() -> None:
    base = engine_base()
    if base is None:
        raise SystemExit("deployment: needs a running Docker engine and a base image")
    sizes = measure(base)
    print(f"base {base}: {sizes['base_mb']:.1f} MB")
    print("| image | added above the base | whole image | target |")
    print("|---|---|---|---|")
    for label, key, target in (
        ("default (ONNX, Python)", "image", "<= 140 MB"),
        ("MLAPI_EXTRAS=sklearn (+ skops)", "sklearn", "-"),
    ):
        added, whole = sizes[f"{key}_added_mb"], sizes[f"{key}_mb"]
        print(f"| {label} | {added:.1f} MB | {whole:.1f} MB | {target} |")
    print(f"docker compose up -d -> healthy: {sizes['up_to_healthy_s']:.1f} s (target <= 5 s)")


if __name__ == "__main__":
    main()
