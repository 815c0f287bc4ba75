"""run(settings): serve the app with uvicorn, in one process or ``WORKERS``
processes sharing one listening socket (each worker loads its own models and
gets CPUs / WORKERS threads for inference)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import ChangeReload, Multiprocess

from mlapi import logs
from mlapi.app import create_app
from mlapi.settings import Settings, load_settings

log = logging.getLogger("mlapi.server")
SOURCE_DIR = Path(__file__).resolve().parent


class AppFactory:
    """Builds the app inside each worker process. Picklable, so the settings built
    once by the CLI travel to spawned workers instead of being re-read there."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self) -> Starlette:
        configure_logging(self.settings)
        return create_app(self.settings)


def configure_logging(settings: Settings) -> None:
    file_name = "mlapi.log" if settings.workers == 1 else f"mlapi.{os.getpid()}.log"
    logs.configure(settings.log_level, settings.log_format == "json", settings.log_dir, file_name)


class Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM that ended in a clean shutdown exits
    0 (uvicorn re-raises the signal, so the process would die by it: 143 in Docker)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        AppFactory(settings),
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.workers,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )


def reloaded_app() -> Starlette:
    """The app of a reloaded dev server: uvicorn re-imports the code in a fresh
    process and can only do that from an import string, so the settings are
    rebuilt there from the environment (where _run_reloading put them)."""
    return AppFactory(load_settings())()


def _run_reloading(settings: Settings) -> int:
    for name, value in settings.redacted().items():
        if value is not None and name != "API_KEY":  # the key stays where it came from
            os.environ[name] = str(value)
    config = uvicorn.Config(
        "mlapi.server:reloaded_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        reload=True,
        reload_dirs=[str(SOURCE_DIR)],
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
    )
    sock = config.bind_socket()
    ChangeReload(config, target=Server(config).run, sockets=[sock]).run()
    return 0


@contextlib.contextmanager
def _multiprocess_metrics_dir() -> Iterator[None]:
    """Workers write their metric values to files in one folder, so a scrape of any
    worker reports the whole server. The folder must start empty: a fresh one, or
    the operator's PROMETHEUS_MULTIPROC_DIR emptied of an earlier run's files."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="mlapi-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # read by the spawned workers
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def run(settings: Settings) -> int:
    """Serve until stopped; the process exit code."""
    configure_logging(settings)
    config = uvicorn_config(settings)
    log.info(
        "serving models from %s on http://%s:%d (workers=%d, auth=%s)",
        settings.model_path,
        settings.api_host,
        settings.api_port,
        settings.workers,
        "on" if settings.auth_enabled else "off",
    )
    if settings.reload:
        return _run_reloading(settings)
    if settings.workers > 1:
        with _multiprocess_metrics_dir():
            sock = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
        return 0
    server = Server(config)
    server.run()
    return 0 if server.started else 1
