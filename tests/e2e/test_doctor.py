"""`mlapi doctor` with Docker Compose installed: its own merge reads every file the
way Compose does (same configuration, same findings), and on the real engine a
start_period too short for a slow model fails `up --wait` until the values doctor
writes make the same deployment healthy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mlapi import doctor
from mlapi.doctor.view import Deployment
from tests.e2e.conftest import ROOT, Stack, make_stack
from tests.e2e.test_lint import MERGES
from tests.fixtures.compose import CASES, HOST_BYTES, Case, case_id, measured, write_project
from tests.fixtures.models import vector_toml, write_python_model
from tests.process.conftest import MLAPI

pytestmark = pytest.mark.e2e
ENV = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "ML_API_KEY": "k"}
LOAD_S = 12
SLOW = f"""
    import time

    class Slow:
        def load(self):
            time.sleep({LOAD_S})

        def predict(self, inputs):
            return {{"y": inputs["x"]}}
"""


def both(files: list[Path], env_file: Path | None = None) -> list[Deployment]:
    return [
        doctor.read(doctor.Options(files=tuple(files), env_file=env_file, use_compose=flag), ENV)[0]
        for flag in (True, False)
    ]


@pytest.mark.parametrize("merge", list(MERGES))
def test_own_merge_reads_the_checked_in_files_as_compose_does(merge: str) -> None:
    with_compose, own = both([ROOT / name for name in MERGES[merge]])
    assert own == with_compose


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_own_merge_gives_the_same_findings_as_compose(case: Case, tmp_path: Path) -> None:
    files = write_project(tmp_path, case, broken=True)
    with_compose, own = both(files)
    assert own == with_compose
    reports = [
        doctor.audit(view, "", measured(case.measured_load_s, case.model_error), HOST_BYTES)
        for view in (with_compose, own)
    ]
    first, second = ([f.as_json() for f in report.findings] for report in reports)
    assert first == second
    assert any(f["id"] == case.id and f["severity"] == case.severity for f in first)


def test_an_env_file_and_overrides_are_read_alike(tmp_path: Path) -> None:
    files = write_project(tmp_path, CASES[0], broken=False)
    custom = tmp_path / "custom.env"
    custom.write_text("ML_API_MEMORY=768m\nML_API_CPUS=1\nAPI_PORT=8123\n")
    with_compose, own = both(files, custom)
    assert own == with_compose
    assert own.services["api"].memory == 768 << 20 and own.services["api"].cpus == 1.0


def _healthy(stack: Stack) -> bool:
    (container,) = stack.containers("ml-api")
    return str(container["State"].get("Health", {}).get("Status")) == "healthy"


def test_doctor_sizes_a_slow_model_s_start_period(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml", "docker-compose.host-models.yml"])
    stack_factory.append(stack)
    models = tmp_path / "host-models"
    write_python_model(models, "slow", SLOW, vector_toml())
    stack.env.update(
        ML_MODELS_HOST_PATH=str(models), ML_API_START_PERIOD="1s", ML_API_HEALTH_INTERVAL="1s"
    )
    stack.compose("build", "ml-api")
    # 1 s + 1 s x 5 retries < the 12 s load: unhealthy, and `up --wait` says so
    failed = stack.compose("up", "-d", "--wait", "--wait-timeout", "90", check=False)
    assert failed.returncode != 0
    assert not _healthy(stack)

    def run_doctor(*args: str) -> subprocess.CompletedProcess[str]:
        files = [a for name in stack.files for a in ("-f", name)]
        return subprocess.run(
            [MLAPI, "doctor", *files, "--model-path", str(models), *args],
            cwd=stack.folder,
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    before = run_doctor("--format", "json", "--write-env", ".env")
    assert before.returncode == 1, before.stderr
    report = json.loads(before.stdout)
    (slow,) = report["models"]
    assert LOAD_S <= slow["load_seconds"] < LOAD_S + 1
    fails = [f for f in report["findings"] if f["severity"] == "fail"]
    assert [f["id"] for f in fails] == ["healthcheck.start_period"], fails
    period = report["suggested"]["ML_API_START_PERIOD"]
    assert f"ML_API_START_PERIOD={period}" in (stack.folder / ".env").read_text()
    # the process environment wins over .env in Compose: leave the choice to the file
    del stack.env["ML_API_START_PERIOD"]
    after = run_doctor()
    assert after.returncode == 0, after.stdout
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120")
    assert _healthy(stack)


@pytest.mark.parametrize("merge", ["dev (auto-loaded override)", "prod"])
def test_without_docker_on_the_path_the_cli_finds_the_same(merge: str, tmp_path: Path) -> None:
    """No `docker` to run: the CLI falls back to its own merge by itself."""
    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to("/usr/bin/git")
    files = [a for name in MERGES[merge] for a in ("-f", name)]
    results = []
    for path in (os.environ["PATH"], str(only_git)):
        done = subprocess.run(
            [MLAPI, "doctor", *files, "--format", "json", "--no-measure"],
            cwd=ROOT,
            env={**ENV, "PATH": path},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout)["findings"])
    with_compose, without = results
    assert without == with_compose
    assert with_compose, "the checked-in files give some findings (a missing secret file at least)"
