"""Settings the first run writes, and the records store's URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, ensure_env_file
from tests.support.paths import ENV_EXAMPLE


def values(env: Path) -> dict[str, str]:
    return dict(re.findall(r"(?m)^([A-Z_]+)=(.*)$", env.read_text()))


def test_the_first_run_writes_env_with_a_fresh_shared_secret_and_admin_password(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    assert ensure_env_file(env, ENV_EXAMPLE) == ["SHARED_SECRET", "ADMIN_PASSWORD"]
    first = values(env)
    assert len(first["SHARED_SECRET"]) >= 32 and len(first["ADMIN_PASSWORD"]) >= 32
    assert first["SHARED_SECRET"] != first["ADMIN_PASSWORD"]
    assert env.stat().st_mode & 0o777 == 0o600
    assert ensure_env_file(env, ENV_EXAMPLE) == [] and values(env) == first  # later runs change nothing
    other = tmp_path / "other.env"
    ensure_env_file(other, ENV_EXAMPLE)
    assert values(other)["ADMIN_PASSWORD"] != first["ADMIN_PASSWORD"]


def test_an_env_from_before_the_review_page_gets_a_password_and_an_empty_one_stays_off(tmp_path: Path) -> None:
    old = tmp_path / "old.env"
    old.write_text("SHARED_SECRET=kept\nPORT=3001")
    assert ensure_env_file(old, ENV_EXAMPLE) == ["ADMIN_PASSWORD"]
    assert values(old)["SHARED_SECRET"] == "kept" and len(values(old)["ADMIN_PASSWORD"]) >= 32
    off = tmp_path / "off.env"
    off.write_text("SHARED_SECRET=kept\nADMIN_PASSWORD=\n")
    assert ensure_env_file(off, ENV_EXAMPLE) == [] and values(off)["ADMIN_PASSWORD"] == ""


def test_the_records_store_is_sqlite_in_data_dir_unless_database_url_names_postgresql(tmp_path: Path) -> None:
    assert Settings(_env_file=None, data_dir=tmp_path).records_url == f"sqlite+aiosqlite:///{tmp_path}/records.sqlite3"
    pg = Settings(_env_file=None, database_url="postgresql://sb:pw@db.example:5432/sb")
    assert pg.records_url == "postgresql+asyncpg://sb:pw@db.example:5432/sb"
    assert "pw" not in repr(pg) and "pw" not in str(pg.model_dump())
    with pytest.raises(ValidationError, match="DATABASE_URL must be postgresql://"):
        Settings(_env_file=None, database_url="mysql://db.example/sb")


def test_webhook_urls_are_secrets_and_none_are_used_without_the_signing_secret() -> None:
    url = "https://hooks.example/T0/B0/xoxb-token"
    unsigned = Settings(_env_file=None, notify_webhook_url=f"{url}, {url}, http://127.0.0.1:9/hook")
    assert unsigned.webhook_urls == [] and "xoxb-token" not in repr(unsigned)
    signed = Settings(
        _env_file=None, notify_webhook_url=f"{url}, {url}, http://127.0.0.1:9/hook", notify_webhook_secret="s"
    )
    assert signed.webhook_urls == [url, "http://127.0.0.1:9/hook"] and "xoxb-token" not in repr(signed)
    with pytest.raises(ValidationError, match=re.escape("NOTIFY_WEBHOOK_URL entry ftp://hooks.example/…")):
        Settings(_env_file=None, notify_webhook_url="ftp://hooks.example/secret-path")
    with pytest.raises(ValidationError, match="NOTIFY_EMAIL_TO entry 'team' is not an e-mail address"):
        Settings(_env_file=None, notify_email_to="team")
    with pytest.raises(ValidationError, match="SMTP_URL must look like smtp://"):
        Settings(_env_file=None, smtp_url="smtp://mail.example:submission")
    mail = Settings(_env_file=None, notify_email_to="a@example.com, b@example.com", smtp_url="smtp://u:pw@mail.example")
    assert mail.email_enabled and mail.notify_email_to == ["a@example.com", "b@example.com"] and "pw" not in repr(mail)


def test_the_cascade_timeout_is_one_the_speech_engine_accepts() -> None:
    assert Settings(_env_file=None, cascade_timeout_seconds=2).cascade_timeout_seconds == 2
    for wrong in (1.5, 16):
        with pytest.raises(ValidationError, match="cascade_timeout_seconds"):
            Settings(_env_file=None, cascade_timeout_seconds=wrong)


def test_start_up_refuses_a_public_url_twilio_cannot_stream_to_in_one_line(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name.lower() not in Settings.model_fields}
    started = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env={**env, "PUBLIC_URL": "http://switchboard.example"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 1
    (line,) = [line for line in started.stderr.splitlines() if "PUBLIC_URL" in line]
    assert "must be https" in line and "wss://" in line


@pytest.mark.parametrize(
    ("local", "remote"),
    [
        ("http://localhost:3001", "http://localhost.example.com:3001"),
        ("http://127.0.0.1:3001", "http://10.0.0.1:3001"),
        ("http://127.8.0.1", "http://128.0.0.1"),
        ("http://[::1]:9", "http://[2001:db8::1]:9"),
    ],
)
def test_http_stays_allowed_on_this_machine_alone(local: str, remote: str) -> None:
    assert Settings(_env_file=None, public_url=local).public_url == local
    with pytest.raises(ValidationError, match=re.escape(f"PUBLIC_URL {remote} must be https")):
        Settings(_env_file=None, public_url=remote)
