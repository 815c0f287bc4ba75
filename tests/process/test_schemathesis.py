"""schemathesis against the server's own OpenAPI document: over 1,000 generated
requests, every check (status codes and content types documented, no 5xx, auth
enforced, responses matching their schemas)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.process.conftest import Server

pytestmark = pytest.mark.process


def test_schemathesis_finds_no_failure(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH), API_KEY="schema-key")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            server.url + "/openapi.json",
            "-H",
            "X-API-Key: schema-key",
            "--checks",
            "all",
            "--max-examples",
            "60",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = int(re.search(r"(\d+) generated", output).group(1))  # type: ignore[union-attr]
    assert generated >= 1000, output[-2000:]
    assert "Traceback" not in server.log()
