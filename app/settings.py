"""Service configuration, read once from the environment and an optional `.env` file, and handed on to workers."""

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_TOKEN = 16  # characters of SCV_API_TOKEN: shorter ones are guessed, and an empty one is a mistake

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the lines of every scv process, workers too


class Settings(BaseSettings):
    """Every variable of SPEC §3; field aliases are the environment names. Fields with `exclude=True` belong to the
    process that runs the API and the dispatcher: they are never handed on to a worker (`to_env`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    minio_endpoint: str | None = Field(None, alias="MINIO_ENDPOINT")
    minio_access_key: str | None = Field(None, validation_alias=AliasChoices("MINIO_ACCESS_KEY", "MINIO_ROOT_USER"))
    minio_secret_key: SecretStr | None = Field(None, validation_alias=AliasChoices("MINIO_SECRET_KEY",
                                                                                  "MINIO_ROOT_PASSWORD"))
    minio_secure: bool = Field(False, alias="MINIO_SECURE")
    minio_ca_cert: Path | None = Field(None, alias="MINIO_CA_CERT")
    minio_model_bucket: str = Field("models", alias="MINIO_MODEL_BUCKET", min_length=3, max_length=63)
    minio_dataset_bucket: str = Field("datasets", alias="MINIO_DATASET_BUCKET", min_length=3, max_length=63)
    data_dir: Path = Field(Path(".scv"), alias="SCV_DATA_DIR")
    api_token: SecretStr | None = Field(None, alias="SCV_API_TOKEN", exclude=True)
    executor: Literal["local", "ray"] = Field("local", alias="SCV_EXECUTOR")
    max_concurrent_jobs: int = Field(1, alias="SCV_MAX_CONCURRENT_JOBS", ge=0, le=64)
    model_ttl_days: int = Field(0, alias="SCV_MODEL_TTL_DAYS", ge=0, le=36500)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", alias="SCV_DEVICE")
    max_body_bytes: int = Field(16 * 1024 * 1024, alias="SCV_MAX_BODY_BYTES", ge=1024)
    # Inside a Ray job, RAY_ADDRESS is Ray's own variable (the cluster's address, set by Ray).
    ray_address: str | None = Field(None, alias="RAY_ADDRESS", exclude=True)
    ray_auth_token: SecretStr | None = Field(None, alias="RAY_AUTH_TOKEN", exclude=True)
    storage_timeout_s: float = Field(5.0, alias="SCV_STORAGE_TIMEOUT", gt=0)
    database_url: SecretStr | None = Field(None, alias="SCV_DATABASE_URL")
    lease_seconds: float = Field(30.0, alias="SCV_LEASE_SECONDS", ge=1, le=3600)
    max_attempts: int = Field(3, alias="SCV_MAX_ATTEMPTS", ge=1, le=100)
    checkpoint_seconds: float = Field(60.0, alias="SCV_CHECKPOINT_SECONDS", gt=0, le=86400)
    cache_max_bytes: int = Field(10 * 1024**3, alias="SCV_CACHE_MAX_BYTES", ge=0)
    # Memory one analysis, predict request or training batch may use for activations (and Gram matrices).
    analysis_max_bytes: int = Field(1024**3, alias="SCV_ANALYSIS_MAX_BYTES", ge=1024 * 1024)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", alias="SCV_PRECISION")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", alias="SCV_LOG_LEVEL")
    # Whether this CPU computes bfloat16 natively, for `auto` precision; unset: its flags say (for comparisons, tests).
    cpu_bf16: bool | None = Field(None, alias="SCV_CPU_BF16")
    service_url: str = Field("http://127.0.0.1:8000", alias="SCV_URL")  # what the `scv` client commands talk to
    allow_no_token: bool = Field(False, alias="SCV_ALLOW_NO_TOKEN", exclude=True)
    # Host names a loopback-bound service answers besides localhost, 127.0.0.1 and [::1] (comma-separated)
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field((), alias="SCV_ALLOWED_HOSTS", exclude=True)

    @field_validator("minio_endpoint", "minio_access_key", "ray_address", "database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return value or None

    @field_validator("minio_endpoint")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or ":" not in value):
            raise ValueError("must be host:port, without a scheme or path (e.g. minio:9000)")
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _long_token(cls, value):
        if value is not None and len(value.get_secret_value() if isinstance(value, SecretStr) else value) < MIN_TOKEN:
            raise ValueError(f"must be at least {MIN_TOKEN} characters when set (empty too: unset it for an "
                             "open API on loopback); make one with `openssl rand -hex 32`")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return tuple(name.strip().lower() for name in value.split(",") if name.strip())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    @property
    def catalog_url(self) -> str:
        """The catalog's SQLAlchemy URL: SCV_DATABASE_URL, else SQLite in SCV_DATA_DIR (a secret: never log it)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{Path(self.data_dir).resolve() / 'catalog.db'}"

    def to_env(self) -> dict[str, str]:
        """Every setting as the environment variable that sets it, for a worker that reads them back (a training
        child, a Ray job): paths made absolute (a worker may start elsewhere), secrets in clear (never log it);
        unset ones and `exclude=True` ones are left out."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Path):
                value = value.resolve()
            env[env_name(name)] = json.dumps(value) if isinstance(value, bool) else str(value)
        return env


def env_name(field: str) -> str:
    """The environment name of a Settings field: its alias, or the first of its alias choices."""
    info = Settings.model_fields[field]
    return info.alias or info.validation_alias.choices[0]


class SettingsError(RuntimeError):
    """A configuration variable is invalid; the message names it and never echoes secrets."""


def load_settings(**overrides) -> Settings:
    """Read settings, turning validation errors into one readable message per variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"{env_name(field) if field in Settings.model_fields else field.upper()}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(lines)) from None


def check_bind(settings: Settings, host: str) -> None:
    """Refuse to serve an open API (no SCV_API_TOKEN) on an address other machines reach, unless asked to."""
    if settings.api_token is None and not settings.allow_no_token and not is_loopback(host):
        raise SettingsError(f"refusing to serve on {host} without SCV_API_TOKEN: anyone who reaches it could train, "
                            "delete models and move aliases; set SCV_API_TOKEN (e.g. `openssl rand -hex 32`), "
                            "bind to 127.0.0.1, or set SCV_ALLOW_NO_TOKEN=1 to serve an open API on purpose")


def is_loopback(host: str) -> bool:
    """Whether a bind address (or `localhost`) is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()
