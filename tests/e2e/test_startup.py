"""Start to healthy on the real engine: `docker compose up -d` (images built) until
the container's readiness health check passes with the default model. Docker
20.10 has no start_interval, so the check's interval decides; a cheap check
(`mlapi healthcheck` imports no settings stack) makes a short interval affordable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, docker, make_stack

pytestmark = pytest.mark.e2e


def test_up_to_healthy_in_seconds(stack_factory: list[Stack], tmp_path: Path) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml"])
    stack_factory.append(stack)
    stack.compose("build", "ml-api")
    started = time.monotonic()
    stack.compose("up", "-d", "ml-api")
    (container,) = stack.containers("ml-api")
    healthy_after = None
    while time.monotonic() - started < 60:
        (state,) = json.loads(docker("inspect", str(container["Id"])).stdout)
        if state["State"].get("Health", {}).get("Status") == "healthy":
            healthy_after = time.monotonic() - started
            break
        time.sleep(0.1)
    assert healthy_after is not None, "not healthy within 60 s"
    print(f"docker compose up -d -> healthy: {healthy_after:.1f} s")
    assert healthy_after < 8  # the target is 5 s; with 10 s checks it was at least 10
    # and the check itself stays cheap inside the container: no settings stack
    probe = (
        "import sys; from mlapi.cli import main; code = main(['healthcheck']); "
        "print(code, 'pydantic' in sys.modules)"
    )
    out = docker("exec", str(container["Id"]), "python", "-c", probe).stdout.split()
    assert out == ["0", "False"], out
