"""The one configuration object: read once from the environment and `.env`, validated, secrets masked.

Names follow the configuration contract in the design; nothing else in the product reads
`os.environ`. Tests build `Settings(...)` explicitly instead of patching the environment.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.knowledge.abstention import load_model

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
RECORDS_FILE = "records.sqlite3"
# What DATABASE_URL may say, and the async driver each one is reached through.
_DATABASE_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
DEFAULT_GREETING = "Thanks for calling {COMPANY_NAME}. How can I help?"
# In GREETING: the caller's name, when the caller lookup has answered with one before the greeting goes.
CALLER_NAME = "{caller.name}"
_CALLER_NAME_GAP = re.compile(r"\s*\{caller\.name\}")
_LEADING_PUNCTUATION = re.compile(r"^[\s,;:.!?-]+")
DEFAULT_INTENTS = ("question", "billing", "technical problem", "sales", "complaint", "other")
OTHER_INTENT = "other"  # always one of the intents: a call that fits none of the others
_INTENT = re.compile(r"^[a-z][a-z0-9 _-]{0,31}$")
MAX_INTENTS = 20
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
DEPARTMENT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_EMAIL = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+$")
_MAX_URL = 1000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    # Serving
    port: int = Field(3001, ge=0, le=65535)
    public_url: str | None = None

    # Twilio
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    # Only for webhooks signed with a SharedKey (X-Twilio-Webhooks-Signature-Settings); else the auth token.
    twilio_webhook_key: SecretStr | None = None
    twilio_phone_number: str | None = None
    twilio_api_base_url: str | None = None
    fallback_number: str | None = None

    # ElevenLabs
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_base_url: str | None = None
    speech_engine_id: str | None = None
    shared_secret: SecretStr | None = None
    # How long the engine waits for the brain's first words before it abandons the turn and sends it
    # again (the SDK allows 2-15); `make configure` sets it, and the brain speaks well inside it.
    cascade_timeout_seconds: float = Field(8.0, ge=2, le=15)

    # The model: any OpenAI-compatible endpoint. No OPENAI_MODEL means answers come from retrieval alone.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str | None = None
    llm_first_token_timeout: float = Field(3.0, gt=0, le=60)
    llm_idle_timeout: float = Field(10.0, gt=0, le=120)

    # Knowledge and local state
    knowledge_dir: Path = Path("knowledge")
    data_dir: Path = Path("data")
    index_dir: Path = Path("data/index")
    chroma_host: str | None = None
    chroma_port: int = Field(8000, ge=1, le=65535)
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    # When the documents don't answer: a model written by `make eval … ARGS="--fit --write FILE"`;
    # unset, the one shipped in app/knowledge/abstention.py.
    abstention_model: Path | None = None
    ingest_max_file_mb: float = Field(20.0, gt=0)
    ingest_parse_timeout_s: float = Field(120.0, gt=0)
    # On a Chroma server: how long an ingest's lease outlives its last heartbeat (a killed ingest's lapses).
    ingest_lease_seconds: float = Field(15.0, gt=0)

    # Persona and tools
    company_name: str = "Kestrel Broadband"
    # What the caller hears at pickup; {COMPANY_NAME} is filled in; empty (GREETING=) means none.
    greeting: str = Field(DEFAULT_GREETING, max_length=300)
    agent_instructions_file: Path | None = None
    # Departments: numbers, what each handles, opening hours, screening (`app.departments`). A file
    # that is not there is no departments; TRANSFER_TARGETS adds always-open, unscreened ones.
    departments_file: Path | None = Path("departments.toml")
    transfer_targets: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # How long a transfer rings before the caller comes back to the agent (Twilio's <Dial timeout>).
    ring_seconds: int = Field(25, ge=1, le=600)

    # Limits
    max_concurrent_calls: int = Field(20, ge=1)
    max_call_seconds: int = Field(900, ge=10)
    max_utterance_chars: int = Field(600, ge=20)
    max_history_chars: int = Field(4000, ge=0)

    # Several replicas: shared call state in Redis, server processes on this machine, deploys
    redis_url: SecretStr | None = None
    workers: int = Field(1, ge=1, le=64)
    drain_seconds: float = Field(900.0, ge=0)
    # A replica that dies frees its calls' slots within this (its leases are renewed a third as often).
    call_lease_seconds: float = Field(30.0, ge=3, le=600)

    # Call records, knowledge gaps and messages (SQLite under DATA_DIR unless DATABASE_URL names PostgreSQL)
    database_url: SecretStr | None = None
    records_retention_days: int = Field(30, ge=1, le=3650)
    record_calls: bool = True
    # HTTP Basic password of user `admin` on the review page /admin; unset refuses every request there.
    admin_password: SecretStr | None = None

    # Notifications: signed webhooks (none without the secret) and e-mail for new messages.
    # Webhook URLs often carry a token in their path: secrets, like the rest.
    notify_webhook_url: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    notify_webhook_secret: SecretStr | None = None
    notify_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    smtp_url: SecretStr | None = None

    # Caller lookup at pickup: the caller's number POSTed here, signed like the webhooks (with
    # NOTIFY_WEBHOOK_SECRET: none is made without it). An answer later than the timeout is ignored.
    caller_lookup_url: SecretStr | None = None
    caller_lookup_timeout_ms: int = Field(800, ge=50, le=10_000)

    # Post-call analysis: the intents a call is sorted into, and the fields ANALYSIS_FILE (YAML) defines.
    analysis_intents: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_INTENTS))
    analysis_file: Path | None = None

    # Bearer token for /metrics from anywhere but this machine (without it, loopback only).
    metrics_token: SecretStr | None = None

    # Logs
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        greeting = _EmptyGreeting(settings_cls, getattr(dotenv_settings, "env_file", None))
        return init_settings, greeting, env_settings, dotenv_settings, file_secret_settings

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("PUBLIC_URL must look like https://your-host.example (the tunnel's https URL)")
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ValueError("PUBLIC_URL is a base URL: scheme and host only, no path or query")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError(
                f"PUBLIC_URL {value} must be https: Twilio opens media streams only to wss:// URLs "
                "(http is for this machine alone: localhost, 127.0.0.1, ::1)"
            )
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("abstention_model")
    @classmethod
    def _abstention_model(cls, value: Path | None) -> Path | None:
        load_model(value)  # a file that is not a model written by `--fit --write` stops the start, saying why
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError("DATABASE_URL must be postgresql://user:password@host:5432/dbname (or sqlite:///path)")
        return value

    @field_validator("notify_webhook_url", "notify_email_to", "analysis_intents", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for url in value:
            parts = urlsplit(url.get_secret_value())
            if parts.scheme not in ("https", "http") or not parts.hostname or len(url.get_secret_value()) > _MAX_URL:
                raise ValueError(
                    f"NOTIFY_WEBHOOK_URL entry {parts.scheme}://{parts.hostname}/… must look like "
                    "https://hooks.example/switchboard (at most 1000 characters)"
                )
        return list({url.get_secret_value(): url for url in value}.values())

    @field_validator("caller_lookup_url")
    @classmethod
    def _lookup_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("https", "http") or not parts.hostname or len(value.get_secret_value()) > _MAX_URL:
            raise ValueError("CALLER_LOOKUP_URL must look like https://crm.example/switchboard/caller")
        return value

    @field_validator("analysis_intents")
    @classmethod
    def _intents(cls, value: list[str]) -> list[str]:
        intents = list(dict.fromkeys(" ".join(intent.lower().split()) for intent in value))
        for intent in intents:
            if not _INTENT.match(intent):
                raise ValueError(f"intent {intent!r}: lower-case letters, digits, spaces, - or _ (at most 32)")
        if OTHER_INTENT not in intents:
            intents.append(OTHER_INTENT)
        if len(intents) > MAX_INTENTS:
            raise ValueError(f"{len(intents)} intents: at most {MAX_INTENTS}")
        return intents

    @field_validator("analysis_file")
    @classmethod
    def _analysis_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value} does not exist")
        # Imported here: the field definitions' module uses the records' text helpers, which use settings.
        from app.analysis.fields import load_fields

        load_fields(value)
        return value

    @field_validator("notify_email_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _EMAIL.match(address):
                raise ValueError(f"NOTIFY_EMAIL_TO entry {address!r} is not an e-mail address (team@example.com)")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        try:
            valid = parts.scheme in ("smtp", "smtps") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ValueError("SMTP_URL must look like smtp://user:password@mail.example:587 (or smtps:// for port 465)")
        return value

    @field_validator("fallback_number", "twilio_phone_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not E164.match(value):
            raise ValueError(f"{value!r} is not an E.164 number (write it like +15551230001)")
        return value

    @field_validator("transfer_targets", mode="before")
    @classmethod
    def _targets(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        targets: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, number = item.partition("=")
            if not sep:
                raise ValueError(f"TRANSFER_TARGETS entry {item!r} must be department=+15551230001")
            targets[name.strip().lower()] = number.strip()
        return targets

    @field_validator("transfer_targets")
    @classmethod
    def _check_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, number in value.items():
            if not DEPARTMENT_NAME.match(name):
                raise ValueError(f"department name {name!r}: use lower-case letters, digits, - or _")
            if not E164.match(number):
                raise ValueError(f"number for {name!r} ({number!r}) is not E.164, write it like +15551230001")
        return value

    @model_validator(mode="after")
    def _paths_and_pairs(self) -> Settings:
        if self.agent_instructions_file is not None and not self.agent_instructions_file.is_file():
            raise ValueError(f"AGENT_INSTRUCTIONS_FILE {self.agent_instructions_file} does not exist")
        if self.workers > 1 and not self.shared_state:
            raise ValueError(
                f"WORKERS={self.workers} needs REDIS_URL: server processes share their calls' state through Redis"
            )
        return self

    # Derived facts, so no module re-derives them differently.

    @property
    def shared_state(self) -> bool:
        """Call state lives in Redis (several replicas), not in this process alone."""
        return self.redis_url is not None

    @property
    def llm_enabled(self) -> bool:
        return bool(self.openai_model)

    @property
    def first_message(self) -> str | None:
        """The plain greeting (no caller's name), or None when GREETING is empty."""
        return self.greeting_for(None)

    def greeting_for(self, name: str | None) -> str | None:
        """The greeting as the caller hears it: `{caller.name}` filled in, or, without a name, taken
        out with the space before it ("Hi {caller.name}, thanks" says "Hi, thanks"; a greeting left
        starting with punctuation loses it and starts with a capital)."""
        text = self.greeting.replace("{COMPANY_NAME}", self.company_name)
        if name:
            text = text.replace(CALLER_NAME, name)
        elif CALLER_NAME in text:
            text = _LEADING_PUNCTUATION.sub("", _CALLER_NAME_GAP.sub("", text))
            text = text[:1].upper() + text[1:]
        return text.strip() or None

    @property
    def caller_lookup(self) -> str | None:
        """Where callers are looked up: None without NOTIFY_WEBHOOK_SECRET, so no lookup goes unsigned."""
        if self.notify_webhook_secret is None:
            return None
        return self.secret("caller_lookup_url")

    @property
    def brain_auth_configured(self) -> bool:
        return self.elevenlabs_api_key is not None or self.shared_secret is not None

    @property
    def chroma_server(self) -> bool:
        return bool(self.chroma_host)

    @property
    def records_url(self) -> str:
        """The records store as an async SQLAlchemy URL: PostgreSQL through asyncpg, else SQLite."""
        url = self.secret("database_url")
        if url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / RECORDS_FILE).resolve()}"
        scheme, sep, rest = url.partition("://")
        return _DATABASE_SCHEMES[scheme] + sep + rest

    @property
    def webhook_urls(self) -> list[str]:
        """Where webhooks go: none without NOTIFY_WEBHOOK_SECRET, so nothing is ever sent unsigned."""
        if self.notify_webhook_secret is None:
            return []
        return [url.get_secret_value() for url in self.notify_webhook_url]

    @property
    def email_enabled(self) -> bool:
        return bool(self.notify_email_to) and self.smtp_url is not None

    def secret(self, name: str) -> str | None:
        """The plain value of a secret field, for the one place that needs it."""
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None


def _loopback(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a URL only this machine reaches (`make call`'s stand-ins)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _EmptyGreeting(PydanticBaseSettingsSource):
    """`GREETING=` turns the greeting off, though an empty value everywhere else means "not set"."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: object) -> None:
        super().__init__(settings_cls)
        self._sources = (  # the environment first, then .env: the usual order
            EnvSettingsSource(settings_cls, env_ignore_empty=False),
            DotEnvSettingsSource(settings_cls, env_file=env_file, env_ignore_empty=False),  # type: ignore[arg-type]
        )

    def get_field_value(self, field: object, field_name: str) -> tuple[object, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, object]:
        for source in self._sources:
            value = source.env_vars.get("greeting")
            if value is not None:
                return {"greeting": ""} if not value.strip() else {}
        return {}


def load_settings(**overrides: object) -> Settings:
    """Read the settings once, or exit with messages a person can act on."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = ["Switchboard cannot start; fix these settings (in .env or the environment):"]
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            lines.append(f"  {field}: {error['msg'].removeprefix('Value error, ')}")
        sys.exit("\n".join(lines))


# Written fresh into `.env` by the first run: the brain's shared secret and the review page's password.
GENERATED_SECRETS = ("SHARED_SECRET", "ADMIN_PASSWORD")


def ensure_env_file(env_path: Path = Path(".env"), example: Path = Path(".env.example")) -> list[str]:
    """First run: write `.env` from the example with fresh generated secrets. A `.env` from before a
    generated setting existed gets that one appended (a line present but empty means "off" and is
    kept). Returns the names written."""
    if not env_path.exists():
        if not example.exists():
            return []
        text = example.read_text(encoding="utf-8")
        for name in GENERATED_SECRETS:
            text = re.sub(rf"(?m)^{name}=.*$", f"{name}={secrets.token_urlsafe(24)}", text)
        env_path.write_text(text, encoding="utf-8")
        env_path.chmod(0o600)
        return list(GENERATED_SECRETS)
    text = env_path.read_text(encoding="utf-8")
    missing = [name for name in GENERATED_SECRETS if not re.search(rf"(?m)^{name}=", text)]
    if missing:
        tail = "" if text.endswith("\n") or not text else "\n"
        env_path.write_text(text + tail + "".join(f"{n}={secrets.token_urlsafe(24)}\n" for n in missing))
    return missing
