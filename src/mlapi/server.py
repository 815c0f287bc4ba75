"""run(settings): serve the app with uvicorn, in one process or in ``WORKERS``
processes sharing one listening socket (each worker loads its own models and
gets CPUs / WORKERS threads for inference), with a drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import ChangeReload

from mlapi import logs, supervisor
from mlapi.api.fastpath import FastInfer
from mlapi.app import asgi_app
from mlapi.connections import ConnectionLimits, guarded_protocol
from mlapi.errors import ConfigError
from mlapi.lifecycle import Lifecycle
from mlapi.serving.access import KeySettings
from mlapi.serving.rates import FILE_NAME
from mlapi.settings import Settings, load_settings

log = logging.getLogger("mlapi.server")
SOURCE_DIR = Path(__file__).resolve().parent


class AppFactory:
    """Builds the app inside each worker process. Picklable, so the settings built
    once by the CLI travel to spawned workers instead of being re-read there."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle or Lifecycle()

    def __call__(self) -> FastInfer:
        configure_logging(self.settings)
        return asgi_app(self.settings, lifecycle=self.lifecycle)


def configure_logging(settings: Settings) -> None:
    file_name = "mlapi.log" if settings.workers == 1 else f"mlapi.{os.getpid()}.log"
    logs.configure(settings.log_level, settings.log_format == "json", settings.log_dir, file_name)


class Server(uvicorn.Server):
    """uvicorn's server with a drain before the stop. On the first SIGTERM (or
    SIGINT) readiness turns 503 at once while the server keeps accepting and
    serving for ``grace_s``, so a proxy or health checker sees not-ready before
    connections are refused; then uvicorn's own graceful shutdown stops accepting
    and lets accepted requests finish (``timeout_graceful_shutdown``). A stop that
    went this way exits 0 (uvicorn would re-raise the signal: 143 in Docker). A
    second signal stops at once."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and self.lifecycle.start_draining():
            log.info("stop requested: draining (not ready) for %.1fs, then closing", self.grace_s)
            return
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Other fronts (gRPC) stop accepting with HTTP, and finish beside it."""
        closing = [asyncio.ensure_future(close()) for close in self.lifecycle.on_close]
        try:
            await super().shutdown(sockets)
        finally:
            await asyncio.gather(*closing, return_exceptions=True)

    async def on_tick(self, counter: int) -> bool:
        since = self.lifecycle.draining_since
        if since is not None and time.monotonic() - since >= self.grace_s:
            self.should_exit = True
        return await super().on_tick(counter)


def connection_options(settings: Settings, guarded: bool = True) -> dict[str, Any]:
    """uvicorn's options for what one connection may take (slow and idle clients).
    The dev reloader pickles its config into a child process, which a protocol class
    made here cannot travel in: it keeps uvicorn's own protocol (no read deadlines)."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_bytes=settings.max_header_bytes,
    )
    return {
        "http": guarded_protocol(limits) if guarded else "httptools",
        "ws": "none",
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "limit_concurrency": settings.max_connections,
    }


def uvicorn_config(settings: Settings, factory: AppFactory) -> uvicorn.Config:
    return uvicorn.Config(
        factory,
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        **connection_options(settings),
    )


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> bool:
    """Run one server process until it stops; whether it started."""
    lifecycle = Lifecycle()
    config = uvicorn_config(settings, AppFactory(settings, lifecycle))
    server = Server(config, lifecycle, settings.drain_grace_s)
    server.run(sockets=sockets)
    return bool(server.started)


def reloaded_app() -> FastInfer:
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
        **connection_options(settings, guarded=False),
    )
    sock = config.bind_socket()
    server = Server(config, Lifecycle(), grace_s=0.0)
    ChangeReload(config, target=server.run, sockets=[sock]).run()
    return 0


@contextlib.contextmanager
def _multiprocess_metrics_dir() -> Iterator[None]:
    """Workers write their metric values to files in one folder, so a scrape of any
    worker reports the whole server. The folder must start empty: a fresh one, or
    the operator's PROMETHEUS_MULTIPROC_DIR emptied of an earlier run's files."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="mlapi-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.db"), folder / FILE_NAME]:  # metrics, and rate buckets
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # read by the spawned workers
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def _worker_main(settings: Settings, sock: socket.socket) -> None:
    """A spawned worker's entry point (module-level, so it can be pickled)."""
    raise SystemExit(0 if serve(settings, sockets=[sock]) else 1)


def _check_grpc_port(settings: Settings) -> None:
    """A taken gRPC port stops the start with one line (exit 2), before any worker
    starts, as a bad setting does: the workers would each fail to bind it later,
    deep in their start-up."""
    host = settings.api_host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, settings.grpc_port))
        except OSError as exc:
            raise ConfigError(
                f"API_GRPC_PORT: cannot listen on {host}:{settings.grpc_port} "
                f"({exc.strerror}); give another port, or 0 to turn gRPC off"
            ) from None


def _seed(settings: Settings) -> None:
    """MLAPI_SEED_MODELS: the bundled models into MODEL_PATH (all of them when it is
    empty, else only versions newer than a model's newest; see publish.seed), each
    published at once, before any worker scans it."""
    from mlapi.repository.publish import seed
    from mlapi.settings import DEFAULT_MODEL_PATH

    try:
        settings.model_path.mkdir(parents=True, exist_ok=True)
        published = seed(settings.model_path, DEFAULT_MODEL_PATH)
    except OSError as exc:
        raise ConfigError(
            f"MLAPI_SEED_MODELS: cannot fill {settings.model_path}: {exc.strerror}"
        ) from None
    if published:
        log.info("seeded %s with %s", settings.model_path, ", ".join(published))


def run(settings: Settings) -> int:
    """Serve until stopped; the process exit code."""
    configure_logging(settings)
    if settings.grpc_port:
        _check_grpc_port(settings)
    if settings.seed_models:
        _seed(settings)
    keyring = KeySettings(settings.api_keys_file, settings.api_key, settings.admin_key).load()
    log.info(
        "serving models from %s on http://%s:%d (workers=%d, auth=%s, keys=%d)",
        settings.model_path,
        settings.api_host,
        settings.api_port,
        settings.workers,
        "on" if settings.auth_enabled else "off",
        len(keyring.clients) if keyring is not None else 0,
    )
    if settings.reload:
        return _run_reloading(settings)
    if settings.workers > 1:
        with _multiprocess_metrics_dir():
            sock = uvicorn_config(settings, AppFactory(settings)).bind_socket()
            return supervisor.run_workers(settings, sock, _worker_main)
    return 0 if serve(settings) else 1
