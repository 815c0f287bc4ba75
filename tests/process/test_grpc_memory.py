"""What a gRPC caller can make the server hold (issue 22, finding 1): a message of
15 million empty tensor entries (30 MB) took the server from 307 to 842 MB when it
was parsed before the key was checked, and a refused call's parsed message stayed
alive until a full garbage collection. Now a call without the key is refused from
its metadata (nothing read), and a keyed one refused by its contents frees what it
parsed at once: the server's resident memory stays where it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.process.conftest import Server

pytestmark = pytest.mark.process
KEY = "memory-test-key"
INFER = "/inference.GRPCInferenceService/ModelInfer"
# ModelInferRequest: model_name (field 1) "iris", then 15 million empty `inputs`
# entries (field 5, length 0): 30 MB that parse into 15 million objects.
HOSTILE = b"\x0a\x04iris" + b"\x2a\x00" * 15_000_000


def _rss_mb(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _send(address: str, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])
    try:
        call: Any = channel.unary_unary(INFER)  # bytes in, bytes out
        call(HOSTILE, metadata=metadata, timeout=120)
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_hostile_grpc_messages_leave_the_servers_memory_where_it_was(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(grpc=True, API_KEY=KEY)
    assert server.grpc is not None
    before = _rss_mb(server)
    for _ in range(7):  # was +535 MB each
        assert _send(server.grpc, ()) == grpc.StatusCode.UNAUTHENTICATED
    keyless = _rss_mb(server)
    assert keyless - before < 100, (before, keyless)
    for _ in range(5):  # was +100 MB each, up to about 1 GB
        code = _send(server.grpc, (("x-api-key", KEY),))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    keyed = _rss_mb(server)
    # one parse is in memory at a time, and gone after its answer
    assert keyed - before < 300, (before, keyless, keyed)  # was 1,350 MB more
    log = server.log()
    assert "Traceback" not in log
    print(f"resident: {before:.0f} MB, after 7 keyless: {keyless:.0f}, after 5 keyed: {keyed:.0f}")
