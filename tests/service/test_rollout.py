"""Changing a model while traffic flows (issue 9): a new version loads beside the one
that serves and is switched in only once READY; one that fails to load, verify or
warm up changes nothing for clients; the repository poll and the load API take
the same path; what the old version holds is answered there."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mlapi.errors import ConfigError
from mlapi.repository import publish
from tests.conftest import wait_for
from tests.fixtures.models import SCALED_MODEL, vector_toml, write_python_model
from tests.fixtures.traffic import back_to_back

Start = Callable[..., TestClient]
SCALED = SCALED_MODEL
BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
# What a switch replaced stays loaded for bake_s (default 60) as the rollback target.
BAKE_1S = "[rollout]\nbake_s = 1\n"


def _source(tmp_path: Path, label: str, source: str = SCALED) -> Path:
    """A version folder outside the repository, ready to publish."""
    folder = tmp_path / "incoming" / label
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(source.replace("\n    ", "\n"))
    (folder / "model.toml").write_text(BAKE_1S + vector_toml().replace("\n    ", "\n"))
    return folder


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", SCALED, vector_toml())
    return repo


def _answer(client: TestClient) -> tuple[int, float | None]:
    response = client.post("/v2/models/m/infer", json=BODY)
    if response.status_code != 200:
        return response.status_code, None
    return 200, response.json()["outputs"][0]["data"][0]


def _traffic(client: TestClient) -> AbstractContextManager[list[tuple[int, float | None]]]:
    """Requests back to back until the block ends (at most 20,000)."""
    return back_to_back(lambda _: _answer(client))


def _index(client: TestClient) -> list[dict[str, object]]:
    return client.post("/v2/repository/index").json()


def test_a_published_version_takes_over_with_nothing_failed(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    client = serve_app(repo)
    with _traffic(client) as answers:
        publish.publish(repo, "m", 2, source=_source(tmp_path, "v2"))
        assert client.post("/v2/repository/models/m/load").status_code == 200
        count = len(answers)
        wait_for(lambda: len(answers) > count + 20, what="traffic after the switch")
        assert client.get("/health").status_code == 200
    assert {status for status, _ in answers} == {200}
    values = [value for _, value in answers]
    switched = values.index(2.0)
    assert set(values[:switched]) == {1.0} and set(values[switched:]) == {2.0}
    wait_for(lambda: [i["version"] for i in _index(client)] == ["2"], what="v1 unloaded")


@pytest.mark.parametrize("broken", ["import", "warm-up", "manifest"])
def test_a_version_that_fails_changes_nothing_for_clients(
    serve_app: Start, tmp_path: Path, broken: str
) -> None:
    repo = _repo(tmp_path)
    client = serve_app(repo)
    if broken == "import":
        publish.publish(repo, "m", 2, source=_source(tmp_path, "v2", "class Broken(:\n"))
    elif broken == "warm-up":
        raising = SCALED.replace(
            "return {", "raise RuntimeError('no such weights')\n            return {"
        )
        publish.publish(repo, "m", 2, source=_source(tmp_path, "v2", raising))
    else:
        published = publish.publish(repo, "m", 2, source=_source(tmp_path, "v2"))
        with (published / "model.py").open("a") as handle:
            handle.write("\n# changed after publishing\n")
    with _traffic(client) as answers:
        response = client.post("/v2/repository/models/m/load")
        assert response.status_code == 400
        assert "version 2" in response.json()["error"]
        assert "keep serving" in response.json()["error"]
        assert client.get("/health").status_code == 200
    assert {answer for answer in answers} == {(200, 1.0)}
    candidate = [item for item in _index(client) if item["version"] == "2"]
    assert candidate and candidate[0]["state"] == "FAILED" and candidate[0]["candidate"]
    reason = str(candidate[0]["reason"])
    expected = {"import": "SyntaxError", "warm-up": "no such weights", "manifest": "'model.py'"}
    assert expected[broken] in reason, reason


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the registry told the operator, in order (its own lines only)."""
    return [r.getMessage() for r in caplog.records if r.name == "mlapi.registry"]


def test_the_repository_poll_switches_new_versions_in_and_tries_a_failed_one_once(
    serve_app: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _repo(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    caplog.set_level(logging.INFO, logger="mlapi.registry")
    caplog.clear()
    with _traffic(client) as answers:
        publish.publish(repo, "m", 2, source=_source(tmp_path, "v2"))
        wait_for(lambda: answers[-1] == (200, 2.0), timeout_s=10, what="v2 serving")
        publish.publish(repo, "m", 3, source=_source(tmp_path, "v3", "class Broken(:\n"))
        wait_for(
            lambda: any(i.get("state") == "FAILED" for i in _index(client)),
            timeout_s=10,
            what="v3 refused",
        )
        time.sleep(1.0)  # ten more polls: a failed version whose files did not change stays
    assert {status for status, _ in answers} == {200}
    assert answers[-1] == (200, 2.0)
    metrics = client.get("/metrics").text
    assert 'mlapi_model_rollouts_total{model="m",outcome="failed"} 1.0' in metrics
    assert 'mlapi_model_rollouts_total{model="m",outcome="promoted"} 1.0' in metrics
    assert 'mlapi_model_serving_version{model="m"} 2.0' in metrics
    said = [line for line in _said(caplog) if "serves" in line or "serving" in line]
    assert said[0] == "model m v2 now serves", said
    assert said[1] == (
        "model m v3 was not switched in; what served keeps serving: importing 'model.py' "
        "failed: SyntaxError: invalid syntax (model.py, line 1)"
    ), said
    # v3 tried once and said once, not at every poll (it was, ten times a second)
    assert said[2:] == ["model m: the selected version(s) [3] did not load; v2 keep serving"]
    # fixed files: the same version number is tried again and switched in
    shutil.rmtree(repo / "m" / "3")
    publish.publish(repo, "m", 3, source=_source(tmp_path, "v3-fixed"))
    wait_for(lambda: _answer(client) == (200, 3.0), timeout_s=10, what="the fixed v3")
    assert "model m v3 now serves" in _said(caplog)


def test_a_folder_copied_in_by_hand_is_never_served_half_written(
    serve_app: Start, tmp_path: Path
) -> None:
    """A copy that takes a while (not through publish): each poll may see it half
    done; it is served only once it loads whole."""
    repo = _repo(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.05")
    folder = repo / "m" / "2"
    folder.mkdir()
    with _traffic(client) as answers:
        (folder / "model.toml").write_text(vector_toml().replace("\n    ", "\n"))
        source = SCALED.replace("\n    ", "\n")
        with (folder / "model.py").open("w") as handle:
            for line in source.splitlines(keepends=True):
                handle.write(line)
                handle.flush()
                time.sleep(0.1)  # two polls a line
        wait_for(lambda: answers[-1] == (200, 2.0), timeout_s=10, what="v2 serving")
    assert {status for status, _ in answers} == {200}
    assert {value for _, value in answers} == {1.0, 2.0}


HELD = """
    import time
    from pathlib import Path

    class Held:
        def load(self, path):
            self.folder = Path(path)
            self.factor = float(self.folder.name)

        def predict(self, inputs):
            deadline = time.monotonic() + 20
            while not (self.folder.parent / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"y": inputs["x"] * self.factor}
"""


def test_requests_held_by_the_old_version_are_answered_there(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", HELD, vector_toml(extra="[warmup]\n    enabled = false"))
    client = serve_app(repo)
    with ThreadPoolExecutor(max_workers=4) as pool:
        held = [pool.submit(_answer, client) for _ in range(4)]
        registry = client.app.state.registry  # type: ignore[attr-defined]
        wait_for(lambda: registry.get("m").holders == 4, what="four requests on v1")
        source = _source(tmp_path, "v2", HELD)
        (source / "model.toml").write_text(
            BAKE_1S + vector_toml(extra="[warmup]\n    enabled = false").replace("\n    ", "\n")
        )
        publish.publish(repo, "m", 2, source=source)
        assert client.post("/v2/repository/models/m/load").status_code == 200
        (repo / "m" / "release").touch()
        assert [future.result(timeout=30) for future in held] == [(200, 1.0)] * 4
    assert _answer(client) == (200, 2.0)
    wait_for(lambda: [i["version"] for i in _index(client)] == ["2"], what="v1 unloaded")


def test_a_pinned_deployment_never_moves_by_itself(serve_app: Start, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    client = serve_app(repo, MODEL_VERSION="1", MLAPI_REPOSITORY_POLL_S="0.05")
    publish.publish(repo, "m", 2, source=_source(tmp_path, "v2"))
    time.sleep(0.5)  # ten polls
    assert _answer(client) == (200, 1.0)
    assert [i["version"] for i in _index(client)] == ["1"]


def test_two_publishes_of_one_version_one_wins(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    sources = [_source(tmp_path, f"twin{i}") for i in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda s: _try_publish(repo, s), sources))
    assert sorted(outcomes) == ["ok", "refused"]
    assert [p.name for p in (repo / "m").iterdir() if p.name.startswith(".")] == []


def _try_publish(repo: Path, source: Path) -> str:
    try:
        publish.publish(repo, "m", 2, source=source)
    except ConfigError:
        return "refused"
    return "ok"


def _rss_bytes() -> int:
    import re

    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]


def test_a_version_that_does_not_fit_in_memory_is_refused_with_the_numbers(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    limit = _rss_bytes() + 400 * 2**20  # this server (the test process) plus 400 MiB
    client = serve_app(repo, MLAPI_MEMORY_LIMIT=str(limit))
    big = _source(tmp_path, "big")
    (big / "model.toml").write_text("memory_mb = 2000\n" + (big / "model.toml").read_text())
    publish.publish(repo, "m", 2, source=big)
    with _traffic(client) as answers:
        response = client.post("/v2/repository/models/m/load")
        assert response.status_code == 507, response.text
        error = response.json()["error"]
        assert "needs about 2,000 MiB" in error and "memory_mb" in error
        assert f"limit of {limit / 2**20:,.0f} MiB" in error
        assert client.get("/health").status_code == 200
    assert set(answers) == {(200, 1.0)}
    metrics = client.get("/metrics").text
    assert 'mlapi_model_rollouts_total{model="m",outcome="refused"} 1.0' in metrics
    small = _source(tmp_path, "small")
    (small / "model.toml").write_text("memory_mb = 20\n" + (small / "model.toml").read_text())
    publish.publish(repo, "m", 3, source=small)
    assert client.post("/v2/repository/models/m/load").status_code == 200
    assert _answer(client) == (200, 3.0)


def test_at_start_a_model_that_does_not_fit_is_failed_and_the_others_serve(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    write_python_model(repo, "huge", SCALED, "memory_mb = 100000\n" + vector_toml())
    client = serve_app(repo, wait_ready=False)
    wait_for(lambda: "needs about 100,000 MiB" in client.get("/health").text, what="huge refused")
    # m loads beside it, in its own time (huge is refused before it loads anything)
    wait_for(lambda: client.get("/v2/models/m/ready").status_code == 200, what="m ready")
    assert _answer(client) == (200, 1.0)
    assert client.post("/v2/repository/models/huge/load").status_code == 507


def test_a_new_version_whose_config_cannot_be_read_changes_nothing(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    client = serve_app(repo)
    bad = _source(tmp_path, "bad")
    (bad / "model.toml").write_text("surprise = 1\n")
    publish.publish(repo, "m", 2, source=bad)
    response = client.post("/v2/repository/models/m/load")
    assert response.status_code == 400 and "surprise" in response.json()["error"]
    assert _answer(client) == (200, 1.0)
    assert any("surprise" in str(item.get("reason")) for item in _index(client))


# Answers the warm-up (zeros) and fails on every real request.
FAILS_ON_TRAFFIC = """
    from pathlib import Path

    class FailsOnTraffic:
        def load(self, path):
            self.factor = float(Path(path).name)

        def predict(self, inputs):
            if (inputs["x"] != 0).any():
                raise RuntimeError("cannot handle real rows")
            return {"y": inputs["x"] * self.factor}
"""
WATCHED = "[rollout]\nbake_s = 30\nwindow_s = 5\nmax_error_ratio = 0.2\nmin_requests = 10\n"


def test_a_version_that_fails_on_real_traffic_is_rolled_back_by_itself(
    serve_app: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _repo(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    caplog.set_level(logging.INFO, logger="mlapi.registry")
    bad = _source(tmp_path, "bad", FAILS_ON_TRAFFIC)
    (bad / "model.toml").write_text(WATCHED + vector_toml().replace("\n    ", "\n"))
    with _traffic(client) as answers:
        publish.publish(repo, "m", 2, source=bad)
        wait_for(lambda: any(s == 500 for s, _ in answers), timeout_s=10, what="v2 serving")
        wait_for(lambda: answers[-20:] == [(200, 1.0)] * 20, timeout_s=10, what="v1 serving again")
        time.sleep(0.5)  # five more polls: a rolled-back version is not tried again
    failed = [status for status, _ in answers if status != 200]
    assert set(failed) == {500}
    assert len(failed) <= 20, f"{len(failed)} failed answers before the rollback"
    assert answers[-1] == (200, 1.0)
    (rolled,) = [i for i in _index(client) if i.get("version") == "2"]
    assert rolled["state"] in ("FAILED", "ROLLED_BACK") and "rolled back" in str(rolled["reason"])
    assert "10 requests" in str(rolled["reason"]) or "of 1" in str(rolled["reason"])
    metrics = client.get("/metrics").text
    assert 'mlapi_model_rollouts_total{model="m",outcome="rolled_back"} 1.0' in metrics
    assert 'mlapi_model_serving_version{model="m"} 1.0' in metrics
    assert (repo / "m" / ".rolled-back-2").exists()  # the other workers follow this mark
    rolled_lines = [line for line in _said(caplog) if "rolled back:" in line]
    assert len(rolled_lines) == 1 and rolled_lines[0].startswith("model m v2 rolled back: ")
    assert rolled_lines[0].endswith("requests failed on the server within 5s (max_error_ratio 0.2)")


def test_mlapi_models_rollback_sends_every_server_back(serve_app: Start, tmp_path: Path) -> None:
    from mlapi.cli import main

    repo = _repo(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    good = _source(tmp_path, "v2")
    (good / "model.toml").write_text(WATCHED + vector_toml().replace("\n    ", "\n"))
    publish.publish(repo, "m", 2, source=good)
    wait_for(lambda: _answer(client) == (200, 2.0), timeout_s=10, what="v2 serving")
    assert main(["models", "rollback", "m", "--model-path", str(repo)]) == 0
    wait_for(lambda: _answer(client) == (200, 1.0), timeout_s=10, what="v1 back")
    rolled = [i for i in _index(client) if i.get("version") == "2"]
    assert rolled and "by hand" in str(rolled[0]["reason"])
    # nothing older than v1 is left to go back to
    assert main(["models", "rollback", "m", "--model-path", str(repo)]) == 2


def test_a_folder_that_cannot_be_read_is_said_once_and_counted_once(
    serve_app: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While what serves keeps serving: a model.toml that breaks is one warning and
    one failed rollout, not one at every look; fixed, the next version comes."""
    repo = _repo(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    caplog.set_level(logging.INFO, logger="mlapi.registry")
    (repo / "m" / "model.toml").write_text("surprise = 1\n")
    wait_for(
        lambda: any("surprise" in str(i.get("reason")) for i in _index(client)),
        what="the broken folder reported",
    )
    time.sleep(0.5)  # five more looks at the same broken file
    warned = [line for line in _said(caplog) if "what serves keeps serving" in line]
    assert len(warned) == 1 and warned[0].startswith("model m: what serves keeps serving: ")
    assert "surprise" in warned[0]
    metrics = client.get("/metrics").text
    assert 'mlapi_model_rollouts_total{model="m",outcome="failed"} 1.0' in metrics
    assert _answer(client) == (200, 1.0)
    (repo / "m" / "model.toml").write_text(vector_toml().replace("\n    ", "\n"))
    publish.publish(repo, "m", 2, source=_source(tmp_path, "v2"))
    wait_for(lambda: _answer(client) == (200, 2.0), what="v2 once the folder reads again")
    assert not any(
        "surprise" in str(i.get("reason")) for i in _index(client)
    )  # the rollout error is gone


def test_versions_no_longer_selected_keep_serving_while_the_selected_one_fails(
    serve_app: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """latest = 1: v1 serves; a v2 that fails to load leaves v1 serving, and says so."""
    repo = _repo(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    caplog.set_level(logging.INFO, logger="mlapi.registry")
    publish.publish(repo, "m", 2, source=_source(tmp_path, "v2", "class Broken(:\n"))
    wait_for(lambda: any("did not load" in line for line in _said(caplog)), what="the warning")
    (line,) = [line for line in _said(caplog) if "did not load" in line]
    assert line == "model m: the selected version(s) [2] did not load; v1 keep serving"
    assert _answer(client) == (200, 1.0)
    assert 'mlapi_model_serving_version{model="m"} 1.0' in client.get("/metrics").text
