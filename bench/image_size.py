"""The production image's size, default and scikit-learn variants (not a test).

Builds the `production` target with `docker compose build` (the base image from
PYTHON_IMAGE, python:3.12-slim unless set; here the debootstrapped
mlapi-base:bookworm that scripts/test-engine.sh makes is the closest equivalent)
and prints what the Dockerfile adds above the base (the sum of `docker history`
layers above it, i.e. image size minus base size) and the whole image.

    PYTHON_IMAGE=mlapi-base:bookworm .venv/bin/python bench/image_size.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CA = "/etc/ssl/certs/ca-certificates.crt"


def _size(image: str) -> int:
    result = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout)


def main() -> None:
    base = os.environ.get("PYTHON_IMAGE", "python:3.12-slim")
    print(f"base {base}: {_size(base) / 1e6:.1f} MB")
    print("| image | added above the base | whole image | target |")
    print("|---|---|---|---|")
    for label, extras, target in (
        ("default (ONNX, Python)", "", "<= 140 MB"),
        ("MLAPI_EXTRAS=sklearn (+ skops)", "sklearn", "-"),
    ):
        tag = f"size-{extras or 'default'}"
        env = {
            **os.environ,
            "PYTHON_IMAGE": base,
            "MLAPI_EXTRAS": extras,
            "MLAPI_TAG": tag,
            "PIP_CA_FILE": CA if Path(CA).exists() else "/dev/null",
            "COMPOSE_PROGRESS": "quiet",
        }
        subprocess.run(
            [
                "docker",
                "compose",
                "-p",
                "mlapi-size",
                "-f",
                "docker-compose.yml",
                "build",
                "ml-api",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        whole = _size(f"ml-api:{tag}")
        added = whole - _size(base)
        print(f"| {label} | {added / 1e6:.1f} MB | {whole / 1e6:.1f} MB | {target} |")


if __name__ == "__main__":
    main()
