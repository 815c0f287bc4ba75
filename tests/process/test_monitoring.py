"""The monitoring kit, proven against real tools: promtool on the config, rules and
a live /metrics scrape, and a real Prometheus (Debian's binary) scraping
`mlapi serve` and answering every PromQL expression of the Grafana dashboard and
of the alert rules with data. (Grafana itself cannot be installed here; this is
how the dashboard is proven.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import free_port, wait_for
from tests.process.conftest import Server

pytestmark = pytest.mark.process
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ml-api.json"
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool missing: scripts/test-engine.sh installs it"
    return subprocess.run(
        ["promtool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS_DIR,
    )


def test_promtool_accepts_the_config_and_rules_and_the_rule_tests_pass() -> None:
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml").stdout


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 10
    # Grafana's variables, as Grafana would fill them for "All" models
    return [q.replace("$__rate_interval", "30s").replace("$model", ".*") for q in queries]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    expressions = [rule["expr"].strip() for group in rules["groups"] for rule in group["rules"]]
    # the quantity each alert watches: the expression without its threshold
    return [re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+$", "", e) for e in expressions]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["alerts.yml"],
                    "scrape_configs": [
                        {"job_name": "ml-api", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        with (tmp_path / "prometheus.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s=60, what="prometheus ready")
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


SHADOW_FOREVER = (
    '[rollout]\nstrategy = "shadow"\nmin_compared = 1000000\nmax_shadow_s = 3600\n'
    # and the payload log with drift, its reference the first 20 requests
    "[logging]\nsample = 1.0\nreference_requests = 20\n"
)
CANARY_FOREVER = '[rollout]\nstrategy = "canary"\ncanary_percent = [50, 100]\nstep_s = 3600\n'


def test_every_dashboard_and_alert_query_has_data_on_a_live_prometheus(
    start_server: Callable[..., Server], prometheus: Callable[[str], str], tmp_path: Path
) -> None:
    # iris serves v1 with v2 on a shadow trial, irisc v1 with v2 as a canary: the
    # trials' panels have their series too (neither is decided within the test)
    repo = tmp_path / "repo"
    for name, rollout in (("iris", SHADOW_FOREVER), ("irisc", CANARY_FOREVER)):
        for version in ("1", "2"):
            shutil.copytree(DEFAULT_MODEL_PATH / "iris" / "1", repo / name / version)
        (repo / name / "model.toml").write_text(rollout)
    # and an on-demand model, loaded by the first request, unloaded a second after its
    # last: the model cache's panels have their series
    shutil.copytree(DEFAULT_MODEL_PATH / "iris" / "1", repo / "cold" / "1")
    (repo / "cold" / "model.toml").write_text(
        'load = "on_demand"\n[on_demand]\nidle_unload_s = 1\nmin_resident_s = 0\n'
    )
    server = start_server(MODEL_PATH=str(repo), WORKERS="2", MLAPI_LOG_DIR=str(tmp_path / "logs"))
    wait_for(lambda: "mlapi_canary_percent{" in httpx.get(server.url + "/metrics").text)
    scrape = httpx.get(server.url + "/metrics").text
    lint = promtool("check", "metrics", stdin=scrape)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    prom = prometheus(server.url.removeprefix("http://"))
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    deadline = time.monotonic() + 8  # bounded: about 8 s of traffic while it scrapes every 1 s
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/v2/models/cold/infer", json=IRIS).status_code == 200
        while time.monotonic() < deadline:
            for _ in range(20):
                assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200
                assert client.post("/v2/models/irisc/infer", json=IRIS).status_code == 200
            assert client.post("/v2/models/iris/infer", json=bad).status_code == 400
            time.sleep(0.05)

    def has_data(query: str) -> bool:
        answer = httpx.get(prom + "/api/v1/query", params={"query": query}, timeout=10).json()
        assert answer["status"] == "success", (query, answer)
        return bool(answer["data"]["result"])

    missing = [q for q in dashboard_queries() + alert_queries() if not has_data(q)]
    assert missing == [], f"queries with no data: {missing}"
    targets = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
