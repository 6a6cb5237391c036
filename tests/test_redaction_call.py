"""The issue's table, said on one call through `make call`'s stand-ins (signed webhook, media stream,
bridge, brain, the documents-only agent taking a message): no secret reaches the records file or its
WAL, the server's log, a webhook body, the e-mail, or the review page."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from app.observability import log_handler
from app.settings import Settings
from app.testing.live_server import bound_socket
from app.testing.phone import CallRecord, LocalSwitchboard, Phone
from tests.support.mailbox import Mailbox
from tests.support.receiver import Receiver
from tests.support.waiting import until

# What the caller says, turn by turn; a card number is the name given for the message.
SCRIPT = [
    "my card starts 4012 8888",
    "and ends 8888 1881",
    "ssn 078051120",
    "zero seven eight, zero five, one one two zero",
    "card 4111 dash 1111 dash 1111 dash 1111",
    "the password is, uh, swordfish9",
    "my PIN is four three two one",
    "my password is correct horse battery staple",
    "I'd like to leave a message",
    "3782 822463 10005",
    "my number is 415 555 0123",
    "please call me back about my bill",
]
# None of these may be anywhere but in what the caller said into the phone.
SECRETS = [
    "4012 8888", "8888 1881", "40128888", "88881881", "078051120", "zero seven eight", "one one two zero",
    "4111 dash", "dash 1111", "4111111111111111", "swordfish", "three two one", "horse", "battery staple",
    "822463", "82246310005",
]  # fmt: skip
PASSWORD = "review-page-password"


def leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lowered = text.lower()
    return [secret for secret in SECRETS if secret in lowered]


def sqlite_files(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("records.sqlite3*")))


async def test_the_issues_table_said_on_a_call_leaves_no_secret_anywhere(
    tmp_path: Path, shared_data_dir: Path, kb_index: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(shared_data_dir / "models", data_dir / "models")
    sock = bound_socket()
    mailbox = Mailbox()
    await mailbox.start(sock)
    receiver = await Receiver().start()
    settings = Settings(
        _env_file=None, data_dir=data_dir, index_dir=kb_index, admin_password=PASSWORD,
        notify_webhook_url=receiver.url, notify_webhook_secret="whsec_test",
        notify_email_to="team@example.com", smtp_url=f"smtp://127.0.0.1:{sock.getsockname()[1]}",
    )  # fmt: skip
    log_path = data_dir / "call.log"
    root = logging.getLogger()
    level = root.level
    wal_seen: list[bytes] = []
    with log_path.open("a", encoding="utf-8") as log_file:
        handler = log_handler("text", log_file)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            async with LocalSwitchboard(settings) as board:
                assert board.server is not None
                svc: Any = board.server.app.extensions["switchboard"]
                svc.records.outbox.call_ended_grace = timedelta(0)
                async with asyncio.timeout(30):
                    await svc.records.ready.wait()
                record = CallRecord(answers_from="the documents alone")
                async with Phone(board, record, realtime=False) as phone:
                    await phone.greeting(0.0)
                    for line in SCRIPT:
                        await phone.say(line, lambda _: None)
                        wal = data_dir / "records.sqlite3-wal"
                        wal_seen.append(wal.read_bytes() if wal.exists() else b"")
                    await phone.hang_up()
                call_sid = phone.caller.call_sid
                await receiver.wait(lambda r: {"message.created", "call.ended"} <= {e["type"] for e in r.delivered()})
                await until(lambda: mailbox.mails)
                async with httpx.AsyncClient(base_url=board.server.http_url, auth=("admin", PASSWORD)) as http:
                    pages = [
                        (await http.get(path)).text
                        for path in ("/admin/messages", f"/admin/calls/{call_sid}", "/admin/gaps")
                    ]
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            await receiver.stop()
            await mailbox.stop()
    said = [turn.caller for turn in record.turns]
    assert said == SCRIPT and "take_message" in record.turns[-1].tools  # every row was heard, the message taken

    events = [r.event for r in receiver.requests]
    message = next(e["data"] for e in events if e["type"] == "message.created")
    assert message["name"] == "[card number]" and message["callback_number"] == "+14155550123"
    assert any(e["type"] == "gap.created" for e in events)  # gap examples were announced too
    (_, mail) = mailbox.mails[0]
    assert mail["Subject"] == "Message from [card number] (+14155550123)"

    assert not leaks(sqlite_files(data_dir)), "the records file"
    assert all(not leaks(wal) for wal in wal_seen), "the records file's WAL, during the call"
    assert not leaks(log_path.read_bytes()), "call.log"
    for request in receiver.requests:
        assert not leaks(request.body), request.event["type"]
    assert not leaks(mail["Subject"]) and not leaks(mail.get_content())
    for page in pages:
        assert not leaks(page)
    assert re.search(r"\[card number\]", pages[0]) and "[card number]" in pages[1]
