"""External checkers on the container files: hadolint on the Dockerfile and
compose-lint on every merged compose configuration, with no finding of high
severity or above, except the one the GPU host-network variant exists for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, docker

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
MERGES = {
    "dev (auto-loaded override)": ["docker-compose.yml", "docker-compose.override.yml"],
    "base": ["docker-compose.yml"],
    "prod": ["docker-compose.yml", "docker-compose.prod.yml"],
    "prod + ci secret": ["docker-compose.yml", "docker-compose.prod.yml", "docker-compose.ci.yml"],
    "gpu": ["docker-compose.yml", "docker-compose.gpu.yml"],
    "host models": ["docker-compose.yml", "docker-compose.host-models.yml"],
}


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _lint(files: list[str], tmp_path: Path) -> tuple[int, list[str]]:
    args = [a for name in files for a in ("-f", name)]
    merged = docker(
        "compose",
        *args,
        "--profile",
        "monitoring",
        "config",
        cwd=ROOT,
        env={
            "ML_API_KEY": "not-a-real-key",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),
        },
    ).stdout
    path = tmp_path / "merged.yml"
    path.write_text(merged)
    result = subprocess.run(
        [str(BIN / "compose-lint"), "check", str(path)], capture_output=True, text=True, timeout=60
    )
    high = re.findall(r"^\s+\d+\s+(?:HIGH|CRITICAL)\s+(CL-\d+)", result.stdout, re.MULTILINE)
    return result.returncode, high


@pytest.mark.parametrize("merge", list(MERGES))
def test_compose_lint_finds_nothing_high_in_any_merged_config(merge: str, tmp_path: Path) -> None:
    code, high = _lint(MERGES[merge], tmp_path)
    assert (code, high) == (0, []), f"{merge}: {high}"


def test_the_gpu_host_network_variant_has_only_its_one_known_high_finding(tmp_path: Path) -> None:
    files = ["docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.gpu-host.yml"]
    code, high = _lint(files, tmp_path)
    assert high == ["CL-0008"]  # host networking: the reason the variant exists (see the file)
    assert code != 0
