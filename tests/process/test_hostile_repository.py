"""What someone sharing the models volume can leave in it: the poll reads only
regular files, never more than a cap, off the serving thread, so a FIFO, a link to
/dev/zero or a folder of many files never blocks the server, fills its memory or
stops the poll for the other models (issue 22, findings 7, 8 and 10)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import wait_for
from tests.fixtures.models import SCALED_MODEL, vector_toml, write_python_model
from tests.process.conftest import Server, status_of

pytestmark = pytest.mark.process
BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}


def _answer(server: Server, model: str) -> float | None:
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=BODY, timeout=5)
    return response.json()["outputs"][0]["data"][0] if response.is_success else None


def _states(server: Server) -> dict[tuple[str, str], str]:
    index = httpx.post(server.url + "/v2/repository/index", timeout=5).json()
    return {
        (i["name"], str(i.get("version", ""))): f"{i['state']} {i.get('reason', '')}" for i in index
    }


def test_fifos_and_links_to_dev_zero_in_the_repository_never_stop_the_server(
    start_server: object, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    for name in ("a", "b", "m"):
        write_python_model(repo, name, SCALED_MODEL, vector_toml())
    server = start_server(MODEL_PATH=str(repo), MLAPI_REPOSITORY_POLL_S="0.1")  # type: ignore[operator]
    # a: its new version's model.toml is a FIFO (opening it for reading would block)
    (repo / "a" / "2").mkdir()
    (repo / "a" / "2" / "model.py").write_text(textwrap.dedent(SCALED_MODEL))
    os.mkfifo(repo / "a" / "2" / "model.toml")
    # b: a FIFO rollback mark, and a new version whose manifest is /dev/zero
    os.mkfifo(repo / "b" / ".rolled-back-1")
    write_python_model(repo, "b", SCALED_MODEL, vector_toml(), version=2)
    (repo / "b" / "2" / "manifest.json").symlink_to("/dev/zero")
    # a folder with no version in it yet: not a model, and not a reason to be unready
    (repo / "c").mkdir()
    # m: a good new version, after the others in the poll's order
    write_python_model(repo, "m", SCALED_MODEL, vector_toml(), version=3)

    wait_for(lambda: _answer(server, "m") == 3.0, what="m v3 served: the poll went past a and b")
    assert status_of(server.url + "/health/live") == 200
    assert status_of(server.url + "/health") == 200  # a and b v1 still serve
    assert _answer(server, "a") == 1.0 and _answer(server, "b") == 1.0
    states = _states(server)
    assert "not a regular file" in states[("b", "2")], states
    assert "FAILED" in states[("b", "2")]
    assert server.stop() == 0  # nothing holds the shutdown
    log = server.log()
    assert "Traceback" not in log
    assert "model a: what serves keeps serving: 2/model.toml is not a regular file" in log


def test_a_file_name_that_is_not_utf8_in_a_version_is_reported_not_a_500(
    start_server: object, tmp_path: Path
) -> None:
    """A name of raw bytes (a copy by other means; publish refuses it) used to reach
    the JSON index, the logs and error bodies, none of which can hold it."""
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED_MODEL, vector_toml())
    server = start_server(MODEL_PATH=str(repo), MLAPI_REPOSITORY_POLL_S="0.1")  # type: ignore[operator]
    write_python_model(repo, "m", SCALED_MODEL, vector_toml(), version=2)
    folder = repo / "m" / "2"
    (folder / "manifest.json").write_text('{"format": 1, "files": {}}')
    os.close(os.open(os.fsencode(folder) + b"/weights\xff.bin", os.O_CREAT | os.O_WRONLY, 0o644))

    wait_for(lambda: "FAILED" in _states(server).get(("m", "2"), ""), what="m v2 refused")
    assert "file 'weights\\udcff.bin' has a name that is not" in _states(server)[("m", "2")]
    assert _answer(server, "m") == 1.0  # v1 keeps serving
    assert status_of(server.url + "/health") == 200
    assert server.stop() == 0
    assert "Traceback" not in server.log()
