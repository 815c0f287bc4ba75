"""What ml-api relies on inside uvicorn, held to the tested range (pyproject pins
``uvicorn>=0.30,<0.56``): the httptools protocol's hooks and attributes that
connections.py extends, the request cycle's ``disconnected`` flag and the bound
``receive`` that api.calls.disconnect_probe reads, and the server's signal
handling and tick that server.Server overrides. Each test fails when a new uvicorn
changes one of them, before a user meets it."""

from __future__ import annotations

import asyncio
import inspect
import signal
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from mlapi.api.calls import disconnect_probe


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_the_protocol_hooks_connections_py_extends_are_there() -> None:
    protocol = httptools_impl.HttpToolsProtocol
    for hook in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "send_400_response",
    ):
        assert callable(getattr(protocol, hook)), hook
    assert isinstance(httptools_impl.STATUS_LINE, dict) and httptools_impl.STATUS_LINE[431]


def test_a_request_cycle_has_the_disconnected_flag_the_probe_reads() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(receive)
        await asyncio.sleep(3600)

    seen: list[Any] = []

    async def scenario() -> None:
        config = Config(app=app, lifespan="off", log_config=None)
        config.load()
        protocol = httptools_impl.HttpToolsProtocol(
            config=config, server_state=ServerState(), app_state={}
        )
        transport = _Transport()
        protocol.connection_made(transport)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        (receive,) = seen
        cycle = receive.__self__
        assert cycle is protocol.cycle and cycle.transport is transport
        gone = disconnect_probe(receive)
        assert gone is not None and gone() is False
        protocol.connection_lost(None)
        assert cycle.disconnected is True and gone() is True
        for task in list(protocol.tasks if hasattr(protocol, "tasks") else ()):
            task.cancel()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    asyncio.run(scenario())


def test_the_server_methods_server_py_overrides_are_there() -> None:
    server = uvicorn.Server
    assert list(inspect.signature(server.handle_exit).parameters) == ["self", "sig", "frame"]
    assert inspect.iscoroutinefunction(server.on_tick)
    assert inspect.iscoroutinefunction(server.shutdown)
    assert "sockets" in inspect.signature(server.shutdown).parameters
    instance = server(Config(app=lambda *a: None, log_config=None))
    assert instance.should_exit is False
    with instance.capture_signals():
        assert isinstance(instance._captured_signals, list)
        instance.handle_exit(signal.SIGTERM, None)
        assert signal.SIGTERM in instance._captured_signals and instance.should_exit
        instance._captured_signals.clear()  # what server.Server does: no re-raise at exit
