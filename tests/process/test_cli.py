"""The `mlapi` command as a user runs it: exit codes, one-line errors, secrets
never printed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import free_port
from tests.fixtures.models import write_broken_onnx, write_pickle
from tests.process.conftest import MLAPI, Server, base_env

pytestmark = pytest.mark.process


def run(*args: str, cwd: Path | None = None, **env: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLAPI, *args], env=base_env(**env), capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"API_PORT": "http"}, "API_PORT"),
        ({"WORKERS": "-1"}, "WORKERS"),
        ({"MODEL_PATH": "/does/not/exist"}, "MODEL_PATH"),
        ({"API_KEY_FILE": "/does/not/exist"}, "API_KEY_FILE"),
        ({"MLAPI_REQUIRE_AUTH": "1", "MLAPI_SECRETS_DIR": "/nonexistent"}, "MLAPI_REQUIRE_AUTH"),
    ],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line(env: dict[str, str], variable: str) -> None:
    port_args = () if "API_PORT" in env else ("--port", str(free_port()))
    result = run("serve", *port_args, cwd=None, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and lines[0].startswith("mlapi: error:")


def test_bad_usage_is_one_line_and_exit_2() -> None:
    result = run("serve", "--port", "x")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert run("nonsense").returncode == 2


def test_config_show_redacts_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("very-secret-value")
    result = run("config", "show", API_KEY_FILE=str(key_file), API_PORT="9100")
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["API_PORT"] == 9100 and shown["API_KEY"] == "**********"
    assert "very-secret-value" not in result.stdout + result.stderr


def test_dotenv_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("API_PORT=9200\n")
    assert json.loads(run("config", "show", cwd=tmp_path).stdout)["API_PORT"] == 9200


def test_healthcheck_follows_readiness(start_server: Callable[..., Server], tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", tmp_path / "repo" / "iris")
    write_broken_onnx(tmp_path / "repo", "broken")
    nothing = run("healthcheck", "--url", f"http://127.0.0.1:{free_port()}/health")
    assert nothing.returncode == 1 and "unreachable" in nothing.stderr
    good = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    port = good.url.rsplit(":", 1)[1]
    assert run("healthcheck", API_PORT=port).returncode == 0
    assert run("healthcheck", API_PORT=port, API_HOST="0.0.0.0").returncode == 0
    bad = start_server(wait_ready=False, MODEL_PATH=str(tmp_path / "repo"))
    result = run("healthcheck", "--url", bad.url + "/health")
    assert result.returncode == 1 and "503" in result.stderr


def test_models_list_and_validate(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", repo / "iris")
    listed = run("models", "list", MODEL_PATH=str(repo))
    assert listed.returncode == 0 and "iris" in listed.stdout and "model.onnx" in listed.stdout
    valid = run("models", "validate", str(repo))
    assert valid.returncode == 0 and "READY" in valid.stdout
    write_broken_onnx(repo, "broken")
    write_pickle(repo / "evil" / "1" / "model.pkl")
    invalid = run("models", "validate", str(repo))
    assert invalid.returncode == 1
    assert "broken" in invalid.stdout and "FAILED" in invalid.stdout
    assert "MLAPI_ALLOW_PICKLE" in invalid.stdout
    missing = run("models", "validate", str(tmp_path / "nope"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_sigterm_stops_the_server_with_exit_0(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def test_healthcheck_imports_no_settings_stack(tmp_path: Path) -> None:
    """Docker runs it every 2 s: it must cost a bare Python start, not the 0.2 s of
    CPU that importing pydantic and the settings took."""
    probe = (
        "import sys; from mlapi.cli import main; "
        "code = main(['healthcheck', '--url', 'http://127.0.0.1:1/health']); "
        "print(code, sorted(m for m in ('pydantic', 'mlapi.settings', 'asyncio', "
        "'http.client', 'urllib.request') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert result.stdout.strip() == "1 []", result
    assert "unreachable" in result.stderr


def test_seeding_fills_an_empty_model_path_before_serving(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repository = tmp_path / "volume"
    repository.mkdir()
    server = start_server(MODEL_PATH=str(repository), MLAPI_SEED_MODELS="true")
    assert (repository / "iris" / "1" / "model.onnx").read_bytes() == (
        DEFAULT_MODEL_PATH / "iris" / "1" / "model.onnx"
    ).read_bytes()
    assert f"seeded {repository} with iris/1" in server.log()
    assert run("models", "list", MODEL_PATH=str(repository)).stdout.count("iris") == 1


def test_publish_with_a_strategy_writes_it_or_exits_2_with_one_line(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes((DEFAULT_MODEL_PATH / "iris/1/model.onnx").read_bytes())
    (tmp_path / "repo").mkdir()
    args = ("models", "publish", str(source), "--name", "m", "--model-path", str(tmp_path / "repo"))
    assert run(*args, "--strategy", "shadow").returncode == 0
    assert 'strategy = "shadow"' in (tmp_path / "repo/m/1/model.toml").read_text()
    (source / "model.toml").write_text("rollout.bake_s = 5\n")
    for bad in ("bogus", "canary"):
        result = run(*args, "--strategy", bad)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "strategy" in lines[0], lines
    assert sorted(p.name for p in (tmp_path / "repo/m").iterdir()) == ["1"]
