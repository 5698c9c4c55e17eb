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
from pydantic_settings import BaseSettings, SettingsConfigDict

PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]


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

    # Conversation memory.
    history_window: int = Field(20, ge=0, le=500)
    history_max: int = Field(1_000, ge=1, le=100_000)
    history_ttl_seconds: int = Field(90 * 86_400, ge=60)
    max_message_chars: int = Field(16_000, ge=1, le=1_000_000)

    # Turns.
    turn_timeout_seconds: PositiveSeconds = 600.0
    turn_stream_ttl_seconds: int = Field(3_600, ge=10)
    max_turn_events: int = Field(20_000, ge=10)
    rate_limit_per_minute: int = Field(30, ge=0)
    max_concurrent_turns_per_user: int = Field(4, ge=1)
    sse_ping_seconds: PositiveSeconds = 15.0

    # Personas.
    roles_file: Path | None = None
    default_role: str = "assistant"
    max_personas_per_user: int = Field(100, ge=0, le=10_000)  # personas of one's own; 0: none

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    # GET /metrics (Prometheus). With a token, scrapers send `Authorization: Bearer <token>`.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None

    @field_validator("openai_api_key", "secret_key", "metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("openai_base_url", "redis_url", "roles_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if value == "" else value

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

    def resolved_secret_key(self) -> str:
        """SECRET_KEY, or one generated on first use and kept in DATA_DIR/secret_key (0600)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            candidate = path.with_name(f".secret_key.{os.getpid()}")
            candidate.write_text(secrets.token_urlsafe(48) + "\n", encoding="utf-8")
            candidate.chmod(0o600)
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
