"""`python -m app notify test`: a signed `ping` to every webhook and a test e-mail, and what each answered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from app.notify.delivery import DeliveryTimings, notify_status
from app.notify.events import PING
from app.notify.senders import Senders
from app.records.outbox import destinations, new_event_id
from app.settings import Settings


async def test(settings: Settings, out: TextIO) -> int:
    """0 when every destination took the ping, 1 otherwise."""
    for line in notify_status(settings):
        print(line, file=out)
    targets = destinations(settings)
    if not targets:
        print(
            "Nothing to send to: set NOTIFY_WEBHOOK_URL and NOTIFY_WEBHOOK_SECRET, or NOTIFY_EMAIL_TO and SMTP_URL.",
            file=out,
        )
        return 1
    senders = Senders(settings)
    failed = 0
    try:
        for destination in targets:
            event_id = new_event_id()
            data = {"message": "A test event from `python -m app notify test`."}
            sent = await senders.send(destination, event_id, PING, datetime.now(UTC), data, DeliveryTimings())
            answer = f" {sent.answer[:200]!r}" if sent.answer else ""
            if sent.ok:
                print(f"ok      {destination.shown}  {sent.status}{answer}", file=out)
            else:
                failed += 1
                print(f"FAILED  {destination.shown}  {sent.error}{answer}", file=out)
    finally:
        await senders.aclose()
    return 1 if failed else 0
