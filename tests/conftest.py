"""Shared fixtures: settings for a model repository, an in-process client that runs
the app's lifespan, and polling with deadlines (never fixed sleeps)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mlapi.app import asgi_app
from mlapi.settings import Settings, load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def make_settings(model_path: Path, **overrides: Any) -> Settings:
    """Settings for a repository; no gRPC port unless asked (tests run side by side)."""
    overrides.setdefault("API_GRPC_PORT", 0)
    return load_settings(env_file=None, MODEL_PATH=str(model_path), **overrides)


@pytest.fixture
def serve_app() -> Iterator[Callable[..., TestClient]]:
    """Start the app in-process for a model repository; wait for readiness unless
    told not to."""
    clients: list[TestClient] = []

    def start(model_path: Path, wait_ready: bool = True, **overrides: Any) -> TestClient:
        client = TestClient(
            asgi_app(make_settings(model_path, **overrides)),
            raise_server_exceptions=False,
            base_url="http://127.0.0.1",  # a key-less server answers loopback names only
        )
        client.__enter__()
        clients.append(client)
        if wait_ready:
            wait_for(lambda: client.get("/health").status_code == 200, what="readiness")
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ml-api variable from the developer's shell leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("MLAPI_") or name in {
            "API_HOST",
            "API_PORT",
            "API_GRPC_PORT",
            "MODEL_PATH",
            "MODEL_VERSION",
            "LOG_LEVEL",
            "WORKERS",
            "API_KEY",
            "API_KEY_FILE",
            "RELOAD",
        }:
            monkeypatch.delenv(name)
