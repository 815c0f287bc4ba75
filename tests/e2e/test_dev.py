"""`docker compose up` with the auto-loaded dev override: the development target,
./src bind-mounted read-only, an edit under src/ served without a rebuild."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.e2e.conftest import Stack, make_stack, wait_until
from tests.fixtures.grpc import infer, triton_client

pytestmark = pytest.mark.e2e


def test_dev_override_hot_reloads_a_read_only_src(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, [])  # no -f: compose loads docker-compose.yml + override itself
    stack_factory.append(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "300")
    (container,) = stack.containers("ml-api")
    assert str(container["Config"]["Image"]).endswith(":dev")
    env = container["Config"]["Env"]
    assert "RELOAD=true" in env and "LOG_LEVEL=debug" in env
    (src_mount,) = [m for m in container["Mounts"] if m["Destination"] == "/app/src"]
    assert src_mount["Type"] == "bind" and src_mount["RW"] is False
    debugger = container["HostConfig"]["PortBindings"]["5678/tcp"]
    assert debugger == [{"HostIp": "127.0.0.1", "HostPort": stack.env["DEBUG_PORT"]}]
    grpc_port = container["HostConfig"]["PortBindings"]["8001/tcp"]
    assert grpc_port == [{"HostIp": "127.0.0.1", "HostPort": stack.env["API_GRPC_PORT"]}]
    with triton_client(f"127.0.0.1:{stack.env['API_GRPC_PORT']}") as client:
        assert client.is_model_ready("iris")
        rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
        assert infer(client, "iris", rows, "FP32").as_numpy("label").tolist() == [b"setosa"]

    before = httpx.get(f"{stack.url}/v2", timeout=10).json()["version"]
    init = stack.folder / "src" / "mlapi" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{before}"', '"9.9.9-edited"'))

    def served() -> bool:
        try:
            return bool(httpx.get(f"{stack.url}/v2", timeout=2).json()["version"] == "9.9.9-edited")
        except (httpx.HTTPError, ValueError):
            return False

    wait_until(served, 60, "the edited source to be served")
    wait_until(lambda: httpx.get(f"{stack.url}/health", timeout=5).status_code == 200, 60, "ready")
