from __future__ import annotations

from pathlib import Path

import pytest

from mlapi.errors import ConfigError
from mlapi.settings import DEFAULT_MODEL_PATH, load_settings


def test_defaults_serve_the_bundled_model_on_loopback() -> None:
    settings = load_settings(env_file=None)
    assert settings.api_host == "127.0.0.1"
    assert settings.api_port == 8000
    assert settings.model_path == DEFAULT_MODEL_PATH
    assert (DEFAULT_MODEL_PATH / "iris" / "1" / "model.onnx").is_file()
    assert settings.api_key is None and not settings.auth_enabled


def test_guide_names_are_unprefixed_and_others_are_mlapi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "9001")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("MODEL_VERSION", "v2")
    monkeypatch.setenv("MLAPI_MAX_BODY_BYTES", "2048")
    settings = load_settings(env_file=None)
    assert (settings.api_port, settings.log_level, settings.workers) == (9001, "debug", 3)
    assert settings.pinned_version == 2
    assert settings.max_body_bytes == 2048


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_PORT", "abc"),
        ("API_PORT", "70000"),
        ("WORKERS", "0"),
        ("LOG_LEVEL", "loud"),
        ("MODEL_VERSION", "latest"),
        ("MLAPI_MAX_BODY_BYTES", "-1"),
        ("MLAPI_ALLOW_PICKLE", "perhaps"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert name in message
    assert "\n" not in message


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_PORT=8123\nLOG_LEVEL=warning\n")
    settings = load_settings(env_file=str(env_file))
    assert settings.api_port == 8123 and settings.log_level == "warning"


def test_api_key_file_wins_and_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-key-123\n")
    monkeypatch.setenv("API_KEY", "env-key-456")
    monkeypatch.setenv("API_KEY_FILE", str(key_file))
    settings = load_settings(env_file=None)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "file-key-123"
    shown = repr(settings) + str(settings.redacted())
    assert "file-key-123" not in shown and "env-key-456" not in shown
    assert settings.redacted()["API_KEY"] == "**********"


def test_docker_secret_file_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "api_key").write_text("from-docker-secret")
    monkeypatch.setenv("MLAPI_SECRETS_DIR", str(tmp_path))
    settings = load_settings(env_file=None)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-docker-secret"


def test_the_admin_key_comes_from_its_file_or_secret_and_else_is_the_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", "api-key-1")
    monkeypatch.setenv("MLAPI_SECRETS_DIR", str(tmp_path))
    assert load_settings(env_file=None).admin_key is None  # the API key is the admin key
    (tmp_path / "admin_key").write_text("from-docker-secret\n")
    settings = load_settings(env_file=None)
    assert settings.admin_key.get_secret_value() == "from-docker-secret"  # type: ignore[union-attr]
    assert settings.redacted()["MLAPI_ADMIN_KEY"] == "**********"
    (tmp_path / "admin.txt").write_text("from-file")
    monkeypatch.setenv("MLAPI_ADMIN_KEY_FILE", str(tmp_path / "admin.txt"))
    assert load_settings(env_file=None).admin_key.get_secret_value() == "from-file"  # type: ignore[union-attr]
    monkeypatch.setenv("MLAPI_ADMIN_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="MLAPI_ADMIN_KEY_FILE"):
        load_settings(env_file=None)


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_a_named_key_file_that_cannot_give_a_key_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    key_file = tmp_path / "key"
    if problem == "empty":
        key_file.write_text("  \n")
    elif problem == "directory":
        key_file.mkdir()
    monkeypatch.setenv("API_KEY_FILE", str(key_file))
    with pytest.raises(ConfigError, match="API_KEY_FILE"):
        load_settings(env_file=None)


def test_require_auth_without_a_key_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLAPI_REQUIRE_AUTH", "true")
    monkeypatch.setenv("MLAPI_SECRETS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="MLAPI_REQUIRE_AUTH"):
        load_settings(env_file=None)


def test_the_keys_file_comes_from_its_setting_or_the_secret_and_turns_keys_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLAPI_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("API_KEY", raising=False)
    settings = load_settings(env_file=None)
    assert settings.api_keys_file is None and not settings.auth_enabled
    assert settings.host_names is not None  # an open server answers only its hosts
    (tmp_path / "api_keys").write_text("")
    settings = load_settings(env_file=None)
    assert settings.api_keys_file == tmp_path / "api_keys" and settings.auth_enabled
    assert settings.host_names is None
    monkeypatch.setenv("API_KEYS_FILE", str(tmp_path / "mine.toml"))
    monkeypatch.setenv("MLAPI_REQUIRE_AUTH", "true")
    assert load_settings(env_file=None).api_keys_file == tmp_path / "mine.toml"
    (tmp_path / "api_keys").unlink()
    monkeypatch.delenv("API_KEYS_FILE")
    with pytest.raises(ConfigError, match="MLAPI_REQUIRE_AUTH is set but no API key"):
        load_settings(env_file=None)
