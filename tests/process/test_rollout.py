"""Issue 9 as a user does it, without Docker: `mlapi serve` with two workers and a
short repository poll, steady traffic, and `mlapi models publish` from a folder
and from a tar stream; a corrupt version and one that does not match its manifest
are refused on every worker while the served version keeps answering."""

from __future__ import annotations

import io
import signal
import subprocess
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import wait_for
from tests.fixtures.models import SCALED_MODEL, vector_toml, write_python_model
from tests.process.conftest import MLAPI, Server, base_env

pytestmark = pytest.mark.process
SCALED = textwrap.dedent(SCALED_MODEL)
BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}


def _folder(tmp_path: Path, label: str, source: str = SCALED) -> Path:
    folder = tmp_path / "incoming" / label
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(source)
    bake = "[rollout]\nbake_s = 1\n"  # what is replaced stays loaded 1 s (default 60)
    (folder / "model.toml").write_text(bake + vector_toml().replace("\n    ", "\n"))
    return folder


def _publish(
    repo: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [MLAPI, "models", "publish", *args, "--model-path", str(repo)],
        input=stdin,
        capture_output=True,
        env=base_env(),
        timeout=60,
    )


@contextmanager
def _traffic(server: Server) -> Iterator[list[tuple[int, float | None]]]:
    """About 100 requests a second on four connections until the block ends (at most
    60 s), each answer (status, value)."""
    answers: list[tuple[int, float | None]] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                response = client.post("/v2/models/m/infer", json=BODY)
                value = response.json()["outputs"][0]["data"][0] if response.is_success else None
                answers.append((response.status_code, value))
                time.sleep(0.04)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) > 20, what="traffic")
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def _index(server: Server) -> list[dict[str, Any]]:
    return httpx.post(server.url + "/v2/repository/index", timeout=10).json()


def test_publish_while_traffic_flows_on_two_workers(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    server = start_server(MODEL_PATH=str(repo), WORKERS="2", MLAPI_REPOSITORY_POLL_S="0.5")
    with _traffic(server) as answers:
        # version 2 from a folder
        started = time.monotonic()
        published = _publish(repo, str(_folder(tmp_path, "2")), "--name", "m")
        assert published.returncode == 0, published.stderr
        assert b"version 2" in published.stdout
        wait_for(lambda: answers[-8:] == [(200, 2.0)] * 8, timeout_s=30, what="v2 everywhere")
        swap_s = time.monotonic() - started
        # a corrupt version 3, then version 3 whose file no longer matches its manifest
        assert (
            _publish(
                repo, str(_folder(tmp_path, "3", "class Broken(:\n")), "--name", "m"
            ).returncode
            == 0
        )
        wait_for(lambda: "SyntaxError" in str(_index(server)), timeout_s=30, what="v3 refused")
        (repo / "m" / "3" / "model.py").write_text(SCALED + "\n# edited in place\n")
        wait_for(
            lambda: "does not match" in str(_index(server)), timeout_s=30, what="manifest check"
        )
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        # version 4 as a tar stream on stdin, as `docker compose exec -T` passes it
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(_folder(tmp_path, "4"), arcname=".")
        streamed = _publish(repo, "-", "--name", "m", "--version", "4", stdin=archive.getvalue())
        assert streamed.returncode == 0, streamed.stderr
        wait_for(lambda: answers[-8:] == [(200, 4.0)] * 8, timeout_s=30, what="v4 everywhere")
    statuses = {status for status, _ in answers}
    assert statuses == {200}, statuses
    assert len(answers) > 50
    assert swap_s < 30
    print(f"publish -> both workers serving v2: {swap_s:.2f} s")
    wait_for(
        lambda: [i["version"] for i in _index(server) if not i.get("candidate")] == ["4"],
        timeout_s=10,
        what="older versions unloaded",
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("-",), b"", b"--name is needed"),
        (("-", "--name", "m"), b"not a tar archive", b"cannot be read"),
        (("missing-folder", "--name", "m"), None, b"is not a folder"),
        (("SRC", "--name", "bad name"), None, b"is not a model name"),
        (("SRC", "--name", "m", "--version", "1"), None, b"already exists"),
        (("SRC", "--name", "m", "--version", "\uff12"), None, b"is not a version"),
    ],
)
def test_publish_refuses_bad_input_with_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], stdin: bytes | None, message: bytes
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    source = str(_folder(tmp_path, "new"))
    result = _publish(repo, *(source if a == "SRC" else a for a in args), stdin=stdin)
    assert result.returncode == 2, result
    assert message in result.stderr and result.stderr.count(b"\n") == 1, result.stderr
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1"]  # nothing left behind


def test_a_tar_that_leaves_its_folder_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = b"print('escaped')"
        member = tarfile.TarInfo("../../evil.py")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    result = _publish(repo, "-", "--name", "m", stdin=archive.getvalue())
    assert result.returncode == 2 and b"leaves its folder" in result.stderr
    assert not (tmp_path / "evil.py").exists() and not (repo / "evil.py").exists()


def test_a_load_while_the_server_stops_never_crashes_it(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    server = start_server(MODEL_PATH=str(repo), MLAPI_REPOSITORY_POLL_S="0.05")
    assert _publish(repo, str(_folder(tmp_path, "2")), "--name", "m").returncode == 0
    server.process.send_signal(signal.SIGTERM)
    statuses = set()
    for _ in range(20):  # loads through the drain grace, until the port closes
        try:
            statuses.add(
                httpx.post(server.url + "/v2/repository/models/m/load", timeout=5).status_code
            )
        except httpx.TransportError:
            break
    assert server.process.wait(timeout=40) == 0
    assert statuses <= {200}, statuses
    assert "Traceback" not in server.log()


def test_with_a_memory_limit_a_version_that_does_not_fit_is_refused_on_every_worker(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    server = start_server(
        MODEL_PATH=str(repo), WORKERS="2", MLAPI_REPOSITORY_POLL_S="0.2", MLAPI_MEMORY_LIMIT="1g"
    )
    big = _folder(tmp_path, "2")
    (big / "model.toml").write_text("memory_mb = 600\n" + (big / "model.toml").read_text())
    with _traffic(server) as answers:
        assert _publish(repo, str(big), "--name", "m").returncode == 0
        # two workers x 600 MiB cannot fit in 1 GiB: each worker refuses it
        wait_for(
            lambda: "needs about 1,200 MiB (2 workers x 600 MiB)" in str(_index(server)),
            timeout_s=20,
            what="v2 refused",
        )
        load = httpx.post(server.url + "/v2/repository/models/m/load", timeout=30)
        assert load.status_code == 507 and "limit of 1,024 MiB" in load.json()["error"]
        small = _folder(tmp_path, "3")
        (small / "model.toml").write_text("memory_mb = 50\n" + (small / "model.toml").read_text())
        assert _publish(repo, str(small), "--name", "m").returncode == 0
        wait_for(lambda: answers[-8:] == [(200, 3.0)] * 8, timeout_s=30, what="v3 everywhere")
    assert {status for status, _ in answers} == {200}
    assert server.process.poll() is None


FAILS_ON_TRAFFIC = textwrap.dedent(
    """
    from pathlib import Path

    class FailsOnTraffic:
        def load(self, path):
            self.factor = float(Path(path).name)

        def predict(self, inputs):
            if float(inputs["x"].ravel()[0]) != 0.0:  # warm-up sends zeros
                raise RuntimeError("cannot handle real rows")
            return {"y": inputs["x"] * self.factor}
    """
)


def test_a_server_with_no_traffic_follows_a_rollback_marked_by_another(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Two servers on one repository (as two workers, or two replicas): the one that
    gets traffic rolls a bad version back and marks it; the one that gets none
    follows the mark at its next looks, whatever its own traffic, and its index
    never again lists the rolled-back version as serving."""
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    busy = start_server(MODEL_PATH=str(repo), MLAPI_REPOSITORY_POLL_S="0.2")
    idle = start_server(MODEL_PATH=str(repo), MLAPI_REPOSITORY_POLL_S="0.2")
    bad = _folder(tmp_path, "bad", FAILS_ON_TRAFFIC)
    watched = "[rollout]\nbake_s = 60\nwindow_s = 10\nmin_requests = 5\n"
    (bad / "model.toml").write_text(watched + vector_toml().replace("\n    ", "\n"))

    def serving(server: Server) -> list[str]:
        return [
            str(i["version"])
            for i in _index(server)
            if i["state"] == "READY" and not i.get("candidate") and not i.get("previous")
        ]

    assert _publish(repo, str(bad), "--name", "m", "--version", "2").returncode == 0
    wait_for(lambda: serving(busy) == ["2"] and serving(idle) == ["2"], what="v2 on both")
    with _traffic(busy) as answers:
        wait_for(lambda: (repo / "m" / ".rolled-back-2").exists(), what="the rollback mark")
        wait_for(lambda: answers[-8:] == [(200, 1.0)] * 8, what="v1 again on the busy one")
    wait_for(lambda: serving(idle) == ["1"], timeout_s=10, what="the idle one following")
    for _ in range(10):  # ten more polls: it stays back
        time.sleep(0.2)
        index = _index(idle)
        assert serving(idle) == ["1"], index
        (rolled,) = [i for i in index if str(i.get("version")) == "2"]
        assert rolled["state"] in ("ROLLED_BACK", "FAILED"), index
    assert httpx.post(idle.url + "/v2/models/m/infer", json=BODY).json()["outputs"][0]["data"] == [
        1.0
    ]
