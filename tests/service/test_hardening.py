"""Issue 14's findings that the in-process app shows: reload leaks, cross-site
requests from a browser, Unicode digits, host paths in open reasons, duplicate
credentials, encodings and names; and auth on every guarded route."""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import wait_for
from tests.fixtures.models import vector_toml, write_python_model

Start = Callable[..., TestClient]
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}
KEY, ADMIN = "k3y-for-inference", "adm1n-for-the-repository"


def _iris_repo(tmp_path: Path) -> Path:
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", tmp_path / "iris")
    return tmp_path


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


# ----- 4. reloading a Python model ----------------------------------------------------
HEAVY_MODEL = """
    import numpy as np

    WEIGHTS = np.ones(20 * 1024 * 1024 // 8)  # 20 MB held by the module


    class Heavy:
        def predict(self, inputs):
            return {"y": inputs["x"] * WEIGHTS[0]}
"""


def test_reloading_a_python_model_forty_times_does_not_grow_memory(
    serve_app: Start, tmp_path: Path
) -> None:
    write_python_model(tmp_path, "heavy", HEAVY_MODEL, vector_toml())
    client = serve_app(tmp_path)
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}]}
    for _ in range(3):  # allocator and caches settle
        assert client.post("/v2/repository/models/heavy/load").status_code == 200
    before = _rss_mb()
    for _ in range(40):
        assert client.post("/v2/repository/models/heavy/load").status_code == 200
        assert client.post("/v2/models/heavy/infer", json=request).json()["outputs"][0]["data"] == [
            1.0,
            2.0,
        ]
    grown = _rss_mb() - before
    assert grown < 60, f"40 reloads of a 20 MB model grew memory by {grown:.0f} MB"
    assert client.post("/v2/repository/models/heavy/unload").status_code == 200


# ----- 5. cross-site requests ------------------------------------------------------------
def test_a_web_page_cannot_drive_the_repository_routes(serve_app: Start, tmp_path: Path) -> None:
    client = serve_app(_iris_repo(tmp_path))
    unload = "/v2/repository/models/iris/unload"
    # the 'simple' requests a browser sends without asking first
    text = client.post(unload, content=b"{}", headers={"content-type": "text/plain"})
    assert text.status_code == 415, text.text
    form = client.post(unload, data={"a": "b"})
    assert form.status_code == 415
    bodiless = client.post(unload, headers={"origin": "https://evil.example"})
    assert bodiless.status_code == 403
    assert "Origin" in bodiless.json()["error"]
    assert "access-control-allow-origin" not in bodiless.headers
    assert client.get("/health").status_code == 200  # nothing was unloaded
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200
    # curl -X POST, tritonclient (no Content-Type) and JSON bodies still work
    assert client.post(unload).status_code == 200
    assert client.post("/v2/repository/models/iris/load", json={}).status_code == 200


def test_a_keyless_server_answers_loopback_host_names_only(
    serve_app: Start, tmp_path: Path
) -> None:
    client = serve_app(_iris_repo(tmp_path))
    rebound = {"host": "attacker.example:8000"}
    for method, path in [
        ("POST", "/v2/models/iris/infer"),
        ("GET", "/v2/models/iris"),
        ("POST", "/v1/models/iris:predict"),
        ("POST", "/v2/repository/index"),
    ]:
        body = {"instances": [[5.1, 3.5, 1.4, 0.2]]} if "v1" in path else IRIS
        response = client.request(method, path, json=body, headers=rebound)
        assert response.status_code == 403, (path, response.text)
        assert "MLAPI_ALLOWED_HOSTS" in response.json()["error"]
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert client.post("/v2/models/iris/infer", json=IRIS, headers={"host": host}).is_success
    # orchestrators and scrapers reach health and metrics by any address
    assert client.get("/health", headers=rebound).status_code == 200
    assert client.get("/metrics", headers={"host": "172.18.0.5:8000"}).status_code == 200


def test_allowed_hosts_and_a_key_open_other_host_names(serve_app: Start, tmp_path: Path) -> None:
    listed = serve_app(_iris_repo(tmp_path), MLAPI_ALLOWED_HOSTS="ml-api, models.internal")
    for host in ("ml-api:8000", "models.internal"):
        assert listed.post("/v2/models/iris/infer", json=IRIS, headers={"host": host}).is_success
    assert listed.get("/v2/models/iris", headers={"host": "other"}).status_code == 403
    keyed = serve_app(tmp_path, API_KEY=KEY)
    response = keyed.post(
        "/v2/models/iris/infer", json=IRIS, headers={"host": "anything", "x-api-key": KEY}
    )
    assert response.status_code == 200


def test_the_repository_routes_take_the_admin_key_and_can_be_turned_off(
    serve_app: Start, tmp_path: Path
) -> None:
    client = serve_app(_iris_repo(tmp_path), API_KEY=KEY, MLAPI_ADMIN_KEY=ADMIN)
    load = "/v2/repository/models/iris/load"
    refused = client.post(load, headers={"x-api-key": KEY})  # a key, but not an admin key
    assert refused.status_code == 403
    assert refused.json()["error"] == "key 'default' may not use the repository routes"
    assert client.post(load, headers={"x-api-key": "nope"}).status_code == 401
    assert client.post(load, headers={"x-api-key": ADMIN}).status_code == 200
    assert client.post("/v2/repository/index", headers={"x-api-key": KEY}).status_code == 403
    assert client.post("/v2/models/iris/infer", json=IRIS, headers={"x-api-key": KEY}).is_success
    # the admin key may also call the models (it may change what they are)
    infer_as_admin = client.post("/v2/models/iris/infer", json=IRIS, headers={"x-api-key": ADMIN})
    assert infer_as_admin.is_success
    off = serve_app(tmp_path, API_KEY=KEY, MLAPI_REPOSITORY_API="false")
    for path in ("/v2/repository/index", load, "/v2/repository/models/iris/unload"):
        response = off.post(path, headers={"x-api-key": KEY})
        assert response.status_code == 403
        assert "MLAPI_REPOSITORY_API" in response.json()["error"]
    assert off.get("/health").status_code == 200


# ----- auth on every guarded route (removing it from one fails here) ------------------------
GUARDED = [
    ("POST", "/v2/models/iris/infer", IRIS),
    ("POST", "/v2/models/iris/versions/1/infer", IRIS),
    ("GET", "/v2/models/iris", None),
    ("GET", "/v2/models/iris/versions/1", None),
    ("GET", "/v2/models/iris/ready", None),
    ("GET", "/v2/models/iris/versions/1/ready", None),
    ("POST", "/v1/models/iris:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]}),
    ("GET", "/v1/models/iris", None),
    ("POST", "/v2/repository/index", None),
    ("POST", "/v2/repository/models/iris/load", None),
    ("POST", "/v2/repository/models/iris/unload", None),
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED, ids=[p for _, p, _ in GUARDED])
def test_every_guarded_route_needs_the_key(
    serve_app: Start, tmp_path: Path, method: str, path: str, body: object
) -> None:
    client = serve_app(_iris_repo(tmp_path), API_KEY=KEY)
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.request(method, path, json=body, headers={"x-api-key": KEY}).is_success


# ----- 7. Unicode digits -----------------------------------------------------------------------
@pytest.mark.parametrize("version", ["%C2%B2", "%E2%91%A0", "%EF%BC%91", "01"])
def test_versions_are_ascii_digits_and_anything_else_is_a_4xx(
    serve_app: Start, tmp_path: Path, version: str
) -> None:
    client = serve_app(_iris_repo(tmp_path))
    for method, path, body in [
        ("POST", f"/v2/models/iris/versions/{version}/infer", IRIS),
        ("GET", f"/v2/models/iris/versions/{version}", None),
        ("GET", f"/v2/models/iris/versions/{version}/ready", None),
    ]:
        response = client.request(method, path, json=body)
        assert response.status_code == 404, (path, response.text)
        assert "error" in response.json()


def test_a_version_folder_in_other_digits_is_not_a_version(
    serve_app: Start, tmp_path: Path
) -> None:
    _iris_repo(tmp_path)
    shutil.copytree(tmp_path / "iris" / "1", tmp_path / "iris" / "\uff11\uff12")  # fullwidth 12
    client = serve_app(tmp_path)
    assert client.post("/v2/models/iris/infer", json=IRIS).json()["model_version"] == "1"


# ----- 8. host paths in open reasons -----------------------------------------------------------
@pytest.mark.parametrize("where", ["load", "predict"])
def test_a_failure_reason_never_shows_a_host_path(
    serve_app: Start, tmp_path: Path, where: str
) -> None:
    _iris_repo(tmp_path)
    raising = f"""
        from pathlib import Path

        class Broken:
            def load(self, path):
                self.path = Path(path)
                if {where == "load"!r}:
                    open(self.path / "weights.bin")

            def predict(self, inputs):
                open("/srv/secret/place/weights.bin")
    """
    write_python_model(tmp_path, "broken", raising, vector_toml())
    client = serve_app(tmp_path, wait_ready=False)

    def failed() -> bool:
        models = {m["name"]: m for m in client.get("/health").json()["models"]}
        return models.get("broken", {}).get("state") == "FAILED"

    wait_for(failed, what="the broken model to fail")
    for body in (client.get("/health").text, client.post("/v2/repository/index").text):
        assert str(tmp_path) not in body
        assert "/srv/secret" not in body
        assert "weights.bin" in body


# ----- 9. duplicate credentials, encodings, names ------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v2/models/iris/infer", IRIS),
        ("GET", "/v2/models/iris", None),
        ("POST", "/v1/models/iris:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]}),
        ("POST", "/v2/repository/index", None),
    ],
)
@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_duplicate_credentials_are_a_400_on_every_route(
    serve_app: Start, tmp_path: Path, method: str, path: str, body: object, header: str
) -> None:
    client = serve_app(_iris_repo(tmp_path), API_KEY=KEY)
    value = f"Bearer {KEY}" if header == "authorization" else KEY
    for pair in ([value, "wrong"], ["wrong", value], [value, value]):
        response = client.request(
            method, path, json=body, headers=[(header, pair[0]), (header, pair[1])]
        )
        assert response.status_code == 400, (pair, response.text)
        assert "more than one" in response.json()["error"]


@pytest.mark.parametrize("encoding", ["GZIP", "Gzip", " gzip "])
def test_content_encodings_are_case_insensitive(
    serve_app: Start, tmp_path: Path, encoding: str
) -> None:
    client = serve_app(_iris_repo(tmp_path))
    response = client.post(
        "/v2/models/iris/infer",
        content=gzip.compress(orjson.dumps(IRIS)),
        headers={"content-encoding": encoding},
    )
    assert response.status_code == 200, response.text


def test_a_model_name_with_a_trailing_newline_is_not_a_model(
    serve_app: Start, tmp_path: Path
) -> None:
    _iris_repo(tmp_path)
    shutil.copytree(tmp_path / "iris", tmp_path / "twin\n")
    client = serve_app(tmp_path)
    assert [m["name"] for m in client.get("/health").json()["models"]] == ["iris"]
    assert client.post("/v2/repository/models/twin%0A/load").status_code == 404
    assert client.post("/v2/repository/models/iris%0A/unload").status_code == 404
    assert client.get("/health").status_code == 200
