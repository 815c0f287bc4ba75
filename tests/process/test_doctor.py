"""`mlapi doctor` as a user runs it: its measurements against what the models are
known to do, its exit codes and output shapes, on the checked-in compose files and
on broken ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlapi.doctor import measure
from tests.fixtures.compose import CASES, write_project
from tests.fixtures.models import vector_toml, write_python_model
from tests.process.conftest import MLAPI, base_env

pytestmark = pytest.mark.process
ROOT = Path(__file__).resolve().parents[2]
MB = 1_000_000

SLOW = """
    import time

    class Slow:
        def load(self):
            time.sleep(2.0)

        def predict(self, inputs):
            return {"y": inputs["x"]}
"""
BIG = """
    import numpy as np

    class Big:
        def load(self):
            self.block = np.ones(300 * 1000 * 1000 // 8)  # written: resident

        def predict(self, inputs):
            return {"y": inputs["x"] + self.block[0]}
"""
SMALL = """
    class Small:
        def predict(self, inputs):
            return {"y": inputs["x"]}
"""
CPUS_SEEN = """
    import os
    from pathlib import Path

    class CpusSeen:
        def load(self, path):
            seen = Path(path).parents[2] / "cpus-seen"
            seen.write_text(str(len(os.sched_getaffinity(0))))

        def predict(self, inputs):
            return {"y": inputs["x"]}
"""
BROKEN = """
    class Broken:
        def load(self):
            raise RuntimeError("weights missing")

        def predict(self, inputs):
            return inputs
"""
WARM = "\n[warmup]\ninputs = { x = [1.0, 2.0, 3.0] }\n"


def doctor(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLAPI, "doctor", *args],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def compose_with_cpus(folder: Path, cpus: str) -> Path:
    case = CASES[0]
    files = write_project(folder, case, broken=False)
    files[0].write_text(files[0].read_text().replace("${ML_API_CPUS:-2}", cpus))
    return files[0]


def test_measurements_match_what_the_models_do(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for name, source in (("slow", SLOW), ("big", BIG), ("small", SMALL), ("cpus", CPUS_SEEN)):
        write_python_model(models, name, source, vector_toml(extra=WARM))
    write_python_model(models, "broken", BROKEN, vector_toml())
    compose = compose_with_cpus(tmp_path / "project", "1")
    result = doctor("-f", str(compose), "--model-path", str(models), "--format", "json")
    assert result.returncode == 1, result.stderr  # the broken model is a fail
    report = json.loads(result.stdout)
    measured = {model["name"]: model for model in report["models"]}
    assert set(measured) == {"slow", "big", "small", "cpus"}
    # a 2 s sleep in load(): between 2 and 3 s
    assert 2.0 <= measured["slow"]["load_seconds"] <= 3.0
    assert measured["small"]["load_seconds"] < 1.0
    # 300 MB written in load(): that much above a model that holds nothing (give or
    # take the few pages two processes differ by: the exact bound is the next test's)
    for key in ("peak_rss_bytes", "steady_rss_bytes"):
        assert measured["big"][key] - measured["small"][key] >= 295 * MB, key
    # latency measured on the warm-up rows, at 1 and at the max batch size
    for model in measured.values():
        assert model["latency_ms"]["batch_1"] > 0 and model["latency_ms"]["batch_max"] > 0
    # held to the service's CPU limit (cpus: "1")
    assert (tmp_path / "cpus-seen").read_text() == "1"
    failed = [f for f in report["findings"] if f["id"] == "model.failed"]
    assert len(failed) == 1 and "weights missing" in failed[0]["message"]
    assert failed[0]["severity"] == "fail"
    # one worker on the one CPU, and memory for the 300 MB it measured
    suggested = report["suggested"]
    assert suggested["ML_API_CPUS"] == "1" and suggested["WORKERS"] == "1"
    assert int(suggested["ML_API_MEMORY"].rstrip("m")) * (1 << 20) > 300 * MB


def test_a_model_that_writes_300_mb_peaks_300_mb_above_its_base(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_python_model(models, "big", BIG, vector_toml(extra=WARM))
    result = measure.measure(models, None, 1.0, 1, {}, timeout_s=120)
    (big,) = result.models
    assert big.error is None
    assert big.peak_rss_bytes - big.base_rss_bytes >= 300 * MB
    assert big.steady_rss_bytes - big.base_rss_bytes >= 300 * MB
    assert big.peak_rss_bytes - big.base_rss_bytes < 400 * MB  # and not wildly more
    assert result.cpu_ids == (min(os.sched_getaffinity(0)),)


@pytest.mark.parametrize(
    "files",
    [
        [],
        ["-f", "docker-compose.yml", "-f", "docker-compose.prod.yml"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.prod.yml", "--no-compose"],
    ],
    ids=["dev", "prod", "prod, own merge"],
)
def test_the_checked_in_files_have_no_fail(files: list[str]) -> None:
    result = doctor(*files, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"findings", "models", "suggested"}
    for finding in report["findings"]:
        assert set(finding) == {"id", "severity", "service", "message", "fix"}
        assert finding["severity"] in ("warn", "ok")
    (iris,) = report["models"]
    assert set(iris) == {
        "name",
        "version",
        "load_seconds",
        "warmup_seconds",
        "peak_rss_bytes",
        "steady_rss_bytes",
        "load",
        "latency_ms",
    }
    assert iris["load"] == "eager"
    assert (iris["name"], iris["version"]) == ("iris", "1")
    assert set(iris["latency_ms"]) == {"batch_1", "batch_max"}
    assert set(report["suggested"]) == {
        "ML_API_START_PERIOD",
        "ML_API_MEMORY",
        "ML_API_CPUS",
        "WORKERS",
    }
    ok = {finding["id"] for finding in report["findings"] if finding["severity"] == "ok"}
    assert {"healthcheck.start_period", "memory.limit", "cpu.threads"} <= ok


def test_text_output_a_fail_and_write_env(tmp_path: Path) -> None:
    compose = compose_with_cpus(tmp_path, "${ML_API_CPUS:-2}")
    compose.write_text(compose.read_text().replace("127.0.0.1:${API_PORT:-8000}:8000", "8000:8000"))
    env = tmp_path / "sized.env"
    env.write_text("API_PORT=8100\n")
    result = doctor("-f", str(compose), "--write-env", str(env))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["fail", "ports.all_interfaces"] for line in lines)
    assert lines[-1].startswith("1 fail,")
    written = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
    assert written["API_PORT"] == "8100"
    assert set(written) == {
        "API_PORT",
        "ML_API_START_PERIOD",
        "ML_API_MEMORY",
        "ML_API_CPUS",
        "WORKERS",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "missing.yml"], "missing.yml: no such file"),
        (["-f", "bad.yml"], "not valid YAML"),
        (["-f", "docker-compose.yml", "--model-path", "nowhere"], "nowhere: not a folder"),
        (["-f", "docker-compose.yml", "--env-file", "nowhere.env"], "no such file"),
        (["-f", "docker-compose.yml", "--timeout", "soon"], "invalid float"),
        (["-f", "empty.yml"], "no service in these files runs the model server"),
    ],
)
def test_when_it_cannot_run_it_says_why_in_one_line_and_exits_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "bad.yml").write_text("services: [\n")
    (tmp_path / "empty.yml").write_text("services: {web: {image: nginx:1.27}}\n")
    result = doctor(*args, "--no-compose", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_without_compose_files_here_it_says_so(tmp_path: Path) -> None:
    result = doctor(cwd=tmp_path)
    assert result.returncode == 2 and "no compose file" in result.stderr
    assert os.listdir(tmp_path) == []


def test_the_measuring_child_runs_nothing_it_was_asked_to_read(tmp_path: Path) -> None:
    """A json.py beside the audited compose file is not imported by the measuring
    child (it ran as `python -m` in the current folder), MLAPI_ALLOW_PICKLE in the
    audited file never lets it unpickle, and the output names the models whose
    model.py measuring ran."""
    import yaml

    project = tmp_path / "project"
    (compose,) = write_project(project, CASES[0], broken=False)[:1]
    document = yaml.safe_load(compose.read_text())
    document["services"]["api"]["environment"]["MLAPI_ALLOW_PICKLE"] = "true"
    compose.write_text(yaml.safe_dump(document))
    marker = tmp_path / "json-was-imported"
    (project / "json.py").write_text(f"open({str(marker)!r}, 'w').write('yes')\n")
    models = tmp_path / "models"
    write_python_model(models, "small", SMALL, vector_toml())
    (models / "pickled" / "1").mkdir(parents=True)
    (models / "pickled" / "1" / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    result = doctor("-f", str(compose), "--model-path", str(models), cwd=project)
    assert result.returncode in (0, 1), result.stderr
    assert not marker.exists()
    lines = result.stdout.splitlines()
    assert any("pickled" in line and "FAILED" in line and "pickle" in line for line in lines)
    assert "measuring ran the code of model.py in: small v1" in result.stdout
