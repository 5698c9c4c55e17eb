"""Settings of the chat service: one validated object, read from the environment or `.env`.

Every other module receives a `Settings` instance (from the app factory or the CLI);
nothing else reads the environment. Invalid values stop start-up with a message that
names the setting.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
CommaList = Annotated[list[str], NoDecode]  # `a,b,c` in the environment, not JSON
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class Settings(BaseSettings):
    """The service's configuration; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # The model. With neither a key nor a base URL, the built-in offline demo model answers.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4.1-mini"
    upstream_timeout_seconds: PositiveSeconds = 60.0
    upstream_max_retries: int = Field(1, ge=0, le=5)

    # Redis. Unset: start_server.py starts an embedded Redis that persists under DATA_DIR.
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_prefix: str = "chat"
    # Connections per process for commands; blocking reads get a pool four times as large.
    redis_max_connections: int = Field(256, ge=2, le=10_000)

    # Where the embedded Redis and the generated secret key live.
    data_dir: Path = Path("data")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65_535)
    workers: int = Field(1, ge=1, le=64)

    # Identity.
    secret_key: SecretStr | None = None
    allow_anonymous: bool = True
    cookie_name: str = "chat_identity"
    cookie_max_age_days: int = Field(400, ge=1, le=400)
    # New anonymous identities per client address and minute (0: no limit): without it,
    # dropping the cookie would be a fresh set of per-user limits for every request.
    anon_identities_per_minute: int = Field(20, ge=0)

    # Web. Unset ALLOWED_HOSTS: the loopback names and HOST. CORS_ORIGINS: none.
    allowed_hosts: CommaList = []
    cors_origins: CommaList = []

    # Conversation memory.
    history_window: int = Field(20, ge=0, le=500)
    history_max: int = Field(1_000, ge=1, le=100_000)
    history_ttl_seconds: int = Field(90 * 86_400, ge=60)
    max_message_chars: int = Field(16_000, ge=1, le=1_000_000)

    # Turns.
    turn_timeout_seconds: PositiveSeconds = 600.0
    # How long a turn holds its session without renewing (it renews every third of this): a
    # turn whose process died frees its session and concurrency slot after at most this.
    turn_lease_seconds: float = Field(10.0, ge=1, le=300)
    turn_stream_ttl_seconds: int = Field(3_600, ge=10)
    max_turn_events: int = Field(20_000, ge=10, le=1_000_000)
    rate_limit_per_minute: int = Field(30, ge=0)
    max_concurrent_turns_per_user: int = Field(4, ge=1)
    sse_ping_seconds: PositiveSeconds = 15.0
    max_answer_chars: int = Field(200_000, ge=100, le=10_000_000)

    # Bounds of a request and a connection (personachat.web.limits and .server).
    max_body_bytes: int | None = Field(None, ge=1_024, le=100_000_000)  # unset: sized for MAX_MESSAGE_CHARS
    max_header_bytes: int = Field(32_768, ge=1_024, le=1_048_576)
    request_timeout_seconds: PositiveSeconds = 30.0
    keep_alive_seconds: int = Field(5, ge=1, le=3_600)
    send_timeout_seconds: PositiveSeconds = 30.0
    max_sockets_per_user: int = Field(16, ge=1, le=10_000)  # open WebSockets per user, per process

    # Personas.
    roles_file: Path | None = None
    default_role: str = "assistant"
    max_personas_per_user: int = Field(100, ge=0, le=10_000)  # personas of one's own; 0: none

    # Automatic session titles (titles.py); unset: on with a real model, off with the demo model.
    auto_title: bool | None = None

    # Models and providers (personachat.models). Unset: one provider from OPENAI_*.
    models_file: Path | None = None

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    # GET /metrics (Prometheus). With a token, scrapers send `Authorization: Bearer <token>`.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None

    @field_validator("openai_api_key", "secret_key", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("openai_base_url", "redis_url", "roles_file", "models_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:]+\](:\d{1,5})?", origin):
                raise ValueError(f"{origin!r} is not an origin like https://chat.example.com or http://localhost:5173")
        return [origin.lower() for origin in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not re.fullmatch(r"\*|(\*\.)?[A-Za-z0-9.-]+|\[?[0-9A-Fa-f:]+\]?", host):
                raise ValueError(f"{host!r} is not a host name (example.com, *.example.com, or *)")
        return [host.lower().strip("[]") for host in value]

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", value):
            raise ValueError("use 1-32 letters, digits, '_', '.' or '-'")
        return value

    @model_validator(mode="after")
    def _check_turn_bounds(self) -> Settings:
        if self.turn_timeout_seconds < self.upstream_timeout_seconds:
            raise ValueError("TURN_TIMEOUT_SECONDS must be at least UPSTREAM_TIMEOUT_SECONDS")
        return self

    @property
    def uses_demo_model(self) -> bool:
        """True when no model is configured, so the built-in offline demo model answers."""
        return self.openai_api_key is None and self.openai_base_url is None

    @property
    def auto_titles(self) -> bool:
        """Whether sessions get a title from the model (never from the offline demo model,
        which names chats by their first message)."""
        return not self.uses_demo_model and self.auto_title is not False

    @property
    def trusted_hosts(self) -> list[str]:
        """The Host names the service answers for: ALLOWED_HOSTS, else the loopback names and HOST."""
        return self.allowed_hosts or [*LOOPBACK_HOSTS, self.host]

    @property
    def resolved_max_body_bytes(self) -> int:
        """MAX_BODY_BYTES, else room for the longest message with every character in its
        longest JSON form (an escaped surrogate pair, 12 bytes) and 4 KiB for the other fields."""
        return self.max_body_bytes if self.max_body_bytes is not None else self.max_message_chars * 12 + 4_096

    def resolved_secret_key(self) -> str:
        """SECRET_KEY, or one generated on first use and kept in DATA_DIR/secret_key.

        The file is created 0600 (never readable by others, not even for a moment) in a
        DATA_DIR that is 0700.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = private_directory(self.data_dir) / "secret_key"
        if not path.exists():
            candidate = path.with_name(f".secret_key.{os.getpid()}")
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
            try:
                # link() is atomic and refuses to replace: several workers starting at
                # once all end up with the first key written.
                os.link(candidate, path)
            except FileExistsError:
                pass
            finally:
                candidate.unlink()
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise RuntimeError(f"{path} is empty: delete it or set SECRET_KEY")
        return key


def private_directory(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700, or tighten it to 0700 if it is ours.

    DATA_DIR holds chat text (the embedded Redis's files) and the secret key: no other
    local user may list or read it. A folder made by an older version (0755) is tightened;
    one owned by someone else (a mounted volume) is left as it is.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o700)
    return path
