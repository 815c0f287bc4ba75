"""One typed settings object, read from the environment, then a ``.env`` file
(dev), then secret files. Built once by the CLI and passed down; nothing else in
the package reads ``os.environ``.

The deployment guide's names are unprefixed (``API_PORT``, ``MODEL_PATH``,
``MODEL_VERSION``, ``LOG_LEVEL``, ``WORKERS``, ``API_KEY``); everything else is
``MLAPI_*``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlapi.errors import ConfigError

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "default_models"
API_KEY_SECRET_NAME = "api_key"
API_KEYS_SECRET_NAME = "api_keys"
ADMIN_KEY_SECRET_NAME = "admin_key"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Every knob of the server. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    api_host: str = Field("127.0.0.1", alias="API_HOST")
    api_port: int = Field(8000, alias="API_PORT", ge=1, le=65535)
    # The Open Inference Protocol over gRPC, on API_HOST; 0 turns it off.
    grpc_port: int = Field(8001, alias="API_GRPC_PORT", ge=0, le=65535)
    model_path: Path = Field(DEFAULT_MODEL_PATH, alias="MODEL_PATH")
    model_version: str | None = Field(None, alias="MODEL_VERSION")
    log_level: LogLevel = Field("info", alias="LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", alias="MLAPI_LOG_FORMAT")
    access_log: Literal["all", "errors", "off"] = Field("errors", alias="MLAPI_ACCESS_LOG")
    workers: int = Field(1, alias="WORKERS", ge=1, le=64)
    api_key: SecretStr | None = Field(None, alias="API_KEY")
    api_key_file: Path | None = Field(None, alias="API_KEY_FILE")
    # One key per client (serving/keys.py); read again every MLAPI_KEYS_POLL_S seconds.
    api_keys_file: Path | None = Field(None, alias="API_KEYS_FILE")
    keys_poll_s: float = Field(2.0, alias="MLAPI_KEYS_POLL_S", gt=0, le=3600)

    secrets_dir: Path = Field(Path("/run/secrets"), alias="MLAPI_SECRETS_DIR")
    require_auth: bool = Field(False, alias="MLAPI_REQUIRE_AUTH")
    max_body_bytes: int = Field(32 * 1024 * 1024, alias="MLAPI_MAX_BODY_BYTES", ge=1024)
    max_header_bytes: int = Field(64 * 1024, alias="MLAPI_MAX_HEADER_BYTES", ge=1024)
    cache_dir: Path | None = Field(None, alias="MLAPI_CACHE_DIR")
    log_dir: Path | None = Field(None, alias="MLAPI_LOG_DIR")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", alias="MLAPI_DEVICE")
    allow_pickle: bool = Field(False, alias="MLAPI_ALLOW_PICKLE")
    load_concurrency: int = Field(
        2,
        alias="MLAPI_MAX_CONCURRENT_LOADS",
        validation_alias=AliasChoices("MLAPI_MAX_CONCURRENT_LOADS", "MLAPI_LOAD_CONCURRENCY"),
        ge=1,
        le=64,
    )
    # on-demand models (README "More models than memory")
    model_loading: Literal["eager", "on_demand"] = Field("eager", alias="MLAPI_MODEL_LOADING")
    min_resident_s: float = Field(30.0, alias="MLAPI_MIN_RESIDENT_S", ge=0, le=86400)
    idle_unload_s: float = Field(0.0, alias="MLAPI_IDLE_UNLOAD_S", ge=0, le=7 * 86400)
    intra_op_threads: int = Field(0, alias="MLAPI_INTRA_OP_THREADS", ge=0, le=256)
    shutdown_timeout_s: float = Field(30.0, alias="MLAPI_SHUTDOWN_TIMEOUT_S", gt=0, le=3600)
    drain_grace_s: float = Field(2.0, alias="MLAPI_DRAIN_GRACE_S", ge=0, le=600)
    request_timeout_s: float = Field(30.0, alias="MLAPI_REQUEST_TIMEOUT_S", gt=0, le=3600)
    max_inflight: int = Field(1024, alias="MLAPI_MAX_INFLIGHT", ge=1)
    # Slow or idle clients: what a connection may take before it is closed.
    header_timeout_s: float = Field(10.0, alias="MLAPI_HEADER_TIMEOUT_S", gt=0, le=3600)
    body_timeout_s: float = Field(30.0, alias="MLAPI_BODY_TIMEOUT_S", gt=0, le=3600)
    keepalive_timeout_s: float = Field(5.0, alias="MLAPI_KEEPALIVE_TIMEOUT_S", gt=0, le=3600)
    max_connections: int = Field(2048, alias="MLAPI_MAX_CONNECTIONS", ge=1)
    # The work one request may ask for.
    max_elements: int = Field(1 << 20, alias="MLAPI_MAX_ELEMENTS", ge=1)
    max_bytes_element: int = Field(1 << 20, alias="MLAPI_MAX_BYTES_ELEMENT", ge=1)
    # Tokens one request to a text model may bring (its inputs together).
    max_tokens: int = Field(16_384, alias="MLAPI_MAX_TOKENS", ge=1)
    # Cross-site safety and the repository (admin) routes.
    allowed_hosts: str = Field("", alias="MLAPI_ALLOWED_HOSTS")
    admin_key: SecretStr | None = Field(None, alias="MLAPI_ADMIN_KEY")
    admin_key_file: Path | None = Field(None, alias="MLAPI_ADMIN_KEY_FILE")
    repository_api: bool = Field(True, alias="MLAPI_REPOSITORY_API")
    # The memory a version may fill: bytes, or 512m / 2g; unset: the container's limit.
    memory_limit: int | None = Field(None, alias="MLAPI_MEMORY_LIMIT", gt=0)
    # Seconds between looks at MODEL_PATH for new or changed versions; 0: never.
    repository_poll_s: float = Field(0.0, alias="MLAPI_REPOSITORY_POLL_S", ge=0, le=86400)
    # What one `mlapi models publish` may bring: bytes (or 512m / 4g) and files.
    publish_max_bytes: int = Field(4 << 30, alias="MLAPI_PUBLISH_MAX_BYTES", gt=0)
    publish_max_files: int = Field(10_000, alias="MLAPI_PUBLISH_MAX_FILES", ge=1)
    # The payload log (serving/payloads.py): the share of requests written with their
    # inputs and outputs under MLAPI_LOG_DIR/payloads (a model's [logging] sample
    # overrides it); each model's files rotate at MLAPI_PAYLOAD_FILE_BYTES and keep
    # at most MLAPI_PAYLOAD_MAX_BYTES (bytes, or 10m / 1g), the oldest going first.
    payload_sample: float = Field(0.0, alias="MLAPI_PAYLOAD_SAMPLE", ge=0, le=1)
    payload_file_bytes: int = Field(8 << 20, alias="MLAPI_PAYLOAD_FILE_BYTES", ge=4096)
    payload_max_bytes: int = Field(256 << 20, alias="MLAPI_PAYLOAD_MAX_BYTES", ge=4096)
    # Fill an empty MODEL_PATH with the bundled models at start (the Swarm stack).
    seed_models: bool = Field(False, alias="MLAPI_SEED_MODELS")
    reload: bool = Field(False, alias="RELOAD")
    debug: bool = Field(False, alias="DEBUG")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("model_version", mode="before")
    @classmethod
    def _blank_version_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("model_version")
    @classmethod
    def _version_is_a_number(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"v?[1-9][0-9]*", value):
            raise ValueError("must be a positive version number such as 1 or v1")
        return value

    @field_validator(
        "memory_limit",
        "publish_max_bytes",
        "payload_file_bytes",
        "payload_max_bytes",
        mode="before",
    )
    @classmethod
    def _memory_size(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if not text:
            return None
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?", text)
        if match is None:
            raise ValueError("must be bytes or a size such as 512m or 2g")
        scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
        return int(float(match.group(1)) * scale)

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.grpc_port == self.api_port:
            raise ValueError(
                f"API_GRPC_PORT and API_PORT are both {self.api_port}: give gRPC another "
                f"port, or 0 to turn it off"
            )
        return self

    @model_validator(mode="after")
    def _debug_means_debug_logs(self) -> Settings:
        if self.debug:
            self.log_level = "debug"
        return self

    @model_validator(mode="after")
    def _resolve_keys(self) -> Settings:
        """For the API key and the admin key alike: the ``*_FILE`` variable wins over
        the value; then ``<secrets_dir>/<name>`` if present. A named file that is
        missing, unreadable or empty is an error: the server never starts
        unauthenticated when the operator asked for a key."""
        self.api_key = self._key(self.api_key, self.api_key_file, "API_KEY", API_KEY_SECRET_NAME)
        self.admin_key = self._key(
            self.admin_key, self.admin_key_file, "MLAPI_ADMIN_KEY", ADMIN_KEY_SECRET_NAME
        )
        if self.api_keys_file is None and (self.secrets_dir / API_KEYS_SECRET_NAME).exists():
            self.api_keys_file = self.secrets_dir / API_KEYS_SECRET_NAME
        if self.require_auth and not self.auth_enabled:
            raise ValueError(
                "MLAPI_REQUIRE_AUTH is set but no API key is configured (set API_KEYS_FILE, "
                "API_KEY_FILE, API_KEY or the secret file /run/secrets/api_key(s))"
            )
        return self

    def _key(
        self, value: SecretStr | None, file: Path | None, variable: str, secret_name: str
    ) -> SecretStr | None:
        if file is not None:
            return _read_secret_file(file, f"{variable}_FILE")
        docker_secret = self.secrets_dir / secret_name
        if value is None and docker_secret.exists():
            return _read_secret_file(docker_secret, f"MLAPI_SECRETS_DIR/{secret_name}")
        return value

    @property
    def pinned_version(self) -> int | None:
        return int(self.model_version.lstrip("v")) if self.model_version else None

    @property
    def auth_enabled(self) -> bool:
        """Whether inference and model routes need a key."""
        return self.api_key is not None or self.api_keys_file is not None

    @property
    def host_names(self) -> frozenset[str] | None:
        """Host names a key-less server answers (loopback and MLAPI_ALLOWED_HOSTS, lower
        case, without port); None when any is allowed (a key is set, or '*' listed)."""
        extra = {name.strip().lower() for name in self.allowed_hosts.split(",") if name.strip()}
        if self.auth_enabled or "*" in extra:
            return None
        return frozenset(LOOPBACK_HOSTS) | extra

    def redacted(self) -> dict[str, Any]:
        """The settings as ``{ENV_NAME: value}``, secrets replaced by a marker."""
        shown: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            shown[field.alias or name] = value
        return shown


def _read_secret_file(path: Path, variable: str) -> SecretStr:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{variable}: secret file {path} does not exist") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{variable}: secret file {path} cannot be read ({type(exc).__name__})"
        ) from None
    key = text.strip()
    if not key:
        raise ValueError(f"{variable}: secret file {path} is empty")
    return SecretStr(key)


def load_settings(env_file: str | None = ".env", **overrides: Any) -> Settings:
    """Build and validate the settings; raise ConfigError with one line naming the
    variable on any bad value. The value itself is never echoed (it may be a secret)."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(item) for item in error["loc"]) or "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(message if not error["loc"] else f"{loc}: {message}")
    return "invalid setting " + "; ".join(parts)


def available_cpus() -> float:
    """CPUs this process may use: the smaller of its affinity mask and its cgroup
    CPU quota (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``)."""
    cpus = float(len(os.sched_getaffinity(0)))
    quota = _cgroup_cpu_quota()
    return min(cpus, quota) if quota else cpus


def _cgroup_cpu_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None
