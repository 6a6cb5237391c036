"""The message store and `python -m app messages`."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from datetime import UTC, datetime, timedelta

import pytest

from app.__main__ import main
from app.records.messages import MessageStore, clean_text, list_messages, normalise_number, parse_since

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


def test_a_message_is_committed_before_add_returns(tmp_path) -> None:
    store = MessageStore(tmp_path / "data")
    store.open()
    saved = store.add(
        name="Dana Smith",
        callback_number="+14155550100",
        message="Please call me back about my bill.",
        call_sid=SID,
        caller="+14155550199",
        conversation_id="conv_1",
    )
    # Another connection (another process, after a crash) sees it at once.
    with sqlite3.connect(tmp_path / "data" / "messages.sqlite3") as other:
        rows = other.execute("SELECT name, callback_number, call_sid, caller, conversation_id FROM messages").fetchall()
    assert rows == [("Dana Smith", "+14155550100", SID, "+14155550199", "conv_1")]
    assert saved.id == 1 and saved.created_at.endswith("+00:00")


def test_since_filters_by_time(tmp_path) -> None:
    store = MessageStore(tmp_path)
    store.open()
    now = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
    for days, name in ((3, "old"), (1, "recent"), (0, "new")):
        store.add(
            name=name,
            callback_number="+14155550100",
            message="hi",
            call_sid=None,
            caller=None,
            conversation_id=None,
            now=now - timedelta(days=days),
        )
    assert [m.name for m in store.since()] == ["old", "recent", "new"]
    assert [m.name for m in store.since(now - timedelta(days=2))] == ["recent", "new"]
    assert MessageStore(tmp_path / "nothing-here").since() == []


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


def test_listing_as_text_and_json(tmp_path) -> None:
    store = MessageStore(tmp_path)
    store.open()
    store.add(
        name="Dana Smith",
        callback_number="+14155550100",
        message="About my bill.",
        call_sid=SID,
        caller="+14155550199",
        conversation_id="conv_1",
    )
    text, as_json = io.StringIO(), io.StringIO()
    assert list_messages(tmp_path, None, False, text) == 0
    assert list_messages(tmp_path, "1d", True, as_json) == 0
    assert "Dana Smith  +14155550100" in text.getvalue() and "About my bill." in text.getvalue()
    (row,) = json.loads(as_json.getvalue())
    assert row["callback_number"] == "+14155550100" and row["call_sid"] == SID and row["conversation_id"] == "conv_1"
    empty = io.StringIO()
    assert list_messages(tmp_path / "none", "2024-01-01", False, empty) == 0
    assert empty.getvalue().startswith("No messages since 2024-01-01")
    assert list_messages(tmp_path, "last tuesday", False, io.StringIO()) == 2


def test_python_m_app_messages(tmp_path, monkeypatch, capsys) -> None:
    """The command reads DATA_DIR like the server does (the process environment is its interface)."""
    store = MessageStore(tmp_path / "data")
    store.open()
    store.add(
        name="Lee", callback_number="+12127365000", message="Hi.", call_sid=None, caller=None, conversation_id=None
    )
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(sys, "argv", ["python -m app", "messages", "--json", "--since", "1h"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["Lee"]
    assert not (tmp_path / ".env").exists()
