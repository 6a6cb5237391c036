"""Messages: callback numbers, their text, and `python -m app messages`."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.__main__ import main
from app.observability import Metrics
from app.records.messages import clean_text, normalise_number, parse_since
from app.records.store import RecordsStore
from app.settings import Settings

SID = "CA" + "a" * 32


@pytest.mark.parametrize(
    ("said", "e164"),
    [
        ("(415) 555-0100", "+14155550100"),
        ("415 555 0132", "+14155550132"),
        ("+1 212 736 5000", "+12127365000"),
        ("+44 20 7183 8750", "+442071838750"),
        ("202.555.0143", "+12025550143"),
        ("555-1234", None),
        ("12", None),
        ("call me maybe", None),
        ("+1 555 123 4567", None),
        ("", None),
    ],
)
def test_callback_numbers_are_normalised_to_e164_or_refused(said: str, e164: str | None) -> None:
    assert normalise_number(said) == e164


def test_text_is_one_printable_line_and_capped() -> None:
    assert clean_text("  Dana\x00\n  Smith\u200b ", 100) == "Dana Smith"
    assert len(clean_text("x" * 900, 500)) == 500


def test_parse_since_takes_dates_and_durations() -> None:
    now = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01T09:30+02:00") == datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration like 12h"):
        parse_since("yesterday")


async def _leave(data: Path, **message: Any) -> None:
    store = RecordsStore(Settings(_env_file=None, data_dir=data), Metrics())
    await store.start()
    try:
        async with asyncio.timeout(30):
            await store.ready.wait()
        await store.messages.add(**message)
    finally:
        await store.stop()


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["python -m app", *argv])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


async def test_python_m_app_messages_reads_the_records_store(tmp_path, monkeypatch, capsys) -> None:
    """The command reads DATA_DIR like the server does (the process environment is its interface)."""
    data = tmp_path / "data"
    await _leave(
        data, name="Dana Smith", callback_number="+14155550100", message="About my bill.", call_sid=SID,
        caller="+14155550199", conversation_id="conv_1",
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATA_DIR", str(data))
    code, out, _ = await asyncio.to_thread(_run, monkeypatch, capsys, "messages", "--json", "--since", "1h")
    assert code == 0
    (row,) = json.loads(out)
    assert row["name"] == "Dana Smith" and row["callback_number"] == "+14155550100" and row["call_sid"] == SID
    code, out, _ = await asyncio.to_thread(_run, monkeypatch, capsys, "messages")
    assert code == 0 and "Dana Smith  +14155550100" in out and "About my bill." in out
    code, out, _ = await asyncio.to_thread(_run, monkeypatch, capsys, "messages", "--since", "2099-01-01")
    assert code == 0 and out.startswith("No messages since 2099-01-01 00:00 UTC")
    code, _, err = await asyncio.to_thread(_run, monkeypatch, capsys, "messages", "--since", "last tuesday")
    assert code == 2 and "duration like 12h" in err
    assert not (tmp_path / ".env").exists()
