"""Telling the team: events in the outbox, delivered signed to real local receivers (an aiohttp server,
an aiosmtpd SMTP server) through failures, restarts and several replicas."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.notify.delivery import Clock, Delivery, DeliveryTimings
from app.observability import Metrics
from app.records.events import CallEnded, CallReceived, TurnDone
from app.records.outbox import lease_next
from app.records.queries import get_call
from app.records.schema import outbox
from app.records.store import RecordsStore
from app.settings import Settings
from app.testing.live_server import bound_socket
from tests.support.calls import sid
from tests.support.mailbox import Mailbox
from tests.support.receiver import Receiver
from tests.support.signing import readme_verifier, signed_by
from tests.support.waiting import until

SECRET = "whsec_test_secret"
FAST = DeliveryTimings(send_timeout=10.0, mail_timeout=10.0, lease=30.0, poll=0.05, first_retry=0.05, max_retry=0.2)
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


class JumpingClock(Clock):
    """Time that jumps ahead to the next try instead of waiting for it, and notes each jump; with
    nothing due (a wait of IDLE_S, the poll), it waits for the next event for real."""

    IDLE_S = 10.0 * 86400

    def __init__(self, start: datetime) -> None:
        self.at = start
        self.jumps: list[float] = []

    def now(self) -> datetime:
        return self.at

    async def wait(self, woken: asyncio.Event, seconds: float) -> None:
        if seconds >= self.IDLE_S:
            await woken.wait()
        elif not woken.is_set():
            self.jumps.append(seconds)
            self.at += timedelta(seconds=seconds)


# The production timings, with the poll for other replicas' events out of the way of a jumping clock.
JUMPING = replace(DeliveryTimings(), poll=JumpingClock.IDLE_S)


class Notifying:
    """A records store and its delivery task, as one replica runs them (`deliver=False`: the test
    starts the delivery task itself)."""

    def __init__(
        self,
        settings: Settings,
        encode: Any = None,
        timings: DeliveryTimings = FAST,
        clock: Clock | None = None,
        deliver: bool = True,
    ) -> None:
        self.metrics = Metrics()
        self.store = RecordsStore(settings, self.metrics, encode)
        self.store.outbox.call_ended_grace = timedelta(0)
        self.delivery = Delivery(
            settings, self.metrics, self.store.engine, self.store.outbox, self.store.ready, timings, clock
        )
        self.clock = clock or Clock()
        self.deliver = deliver

    async def __aenter__(self) -> Notifying:
        await self.store.start()
        if self.deliver:
            self.delivery.start()
        async with asyncio.timeout(30):
            await self.store.ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delivery.stop()
        await self.store.stop()

    async def message(self, text: str = "Please call me about my bill.", call_sid: str | None = None) -> Any:
        return await self.store.messages.add(
            name="Dana Smith", callback_number="+14155550100", message=text, call_sid=call_sid,
            caller="+14155550199", conversation_id=None, now=self.clock.now(),
        )  # fmt: skip

    def counted(self, outcome: str, kind: str = "webhook") -> float:
        value = self.metrics.registry.get_sample_value(
            "switchboard_notify_deliveries_total", {"kind": kind, "outcome": outcome}
        )
        return value or 0.0

    async def rows(self) -> list[Any]:
        async with self.store.engine.connect() as conn:
            return list(await conn.execute(select(outbox).order_by(outbox.c.id)))

    async def settled(self, timeout: float = 20.0) -> list[Any]:
        """The outbox once nothing in it is pending (the receiver's answer is recorded after it is read)."""

        async def rows() -> list[Any] | None:
            found = await self.rows()
            return found if all(row.state != "pending" for row in found) else None

        return await until(rows, timeout=timeout, what="every event settled")


@pytest.fixture
def notify_settings(make_settings: Callable[..., Settings], records_url: str, tmp_path: Path) -> Callable[..., Any]:
    def make(*urls: str, **overrides: Any) -> Settings:
        values = {"database_url": records_url, "data_dir": tmp_path / "data", "notify_webhook_secret": SECRET,
                  "notify_webhook_url": ",".join(urls), **overrides}  # fmt: skip
        return make_settings(**values)

    return make


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


# --- signing -------------------------------------------------------------------------------------


def test_the_readme_check_accepts_our_signature_and_refuses_another_secret_a_changed_body_or_an_old_one() -> None:
    from app.notify.signature import sign

    body = b'{"id":"evt_1","type":"ping","created_at":"2026-11-20T09:30:00+00:00","data":{}}'
    now = int(datetime.now(UTC).timestamp())
    header = sign(SECRET, body, now)
    check = readme_verifier()
    assert check(body, header, SECRET)
    assert not check(body, header, "another-secret")
    assert not check(body.replace(b"ping", b"pong"), header, SECRET)
    old = sign(SECRET, body, now - 600)
    assert not check(body, old, SECRET)
    assert not check(body, "v1=" + header.split("v1=")[1], SECRET)  # no timestamp


# --- delivery --------------------------------------------------------------------------------------


async def test_a_receiver_failing_twice_gets_the_event_once_with_the_same_id(
    notify_settings: Callable[..., Settings],
) -> None:
    async with Receiver(statuses=[500, 500]) as receiver:
        async with Notifying(notify_settings(receiver.url)) as replica:
            saved = await replica.message()
            await receiver.wait(lambda r: len(r.delivered()) == 1)
            # Each destination is sent in order: once the next event is in, the first is settled for good.
            await replica.message("A second message.")
            await receiver.wait(lambda r: len(r.delivered()) == 2)
            rows = await replica.settled()
    first, second = receiver.requests[:3], receiver.requests[3:]
    assert [r.status for r in first] == [500, 500, 200] and [r.status for r in second] == [200]
    assert len({r.event["id"] for r in first}) == 1 and first[0].body == first[2].body
    event = first[2].event
    assert event["type"] == "message.created" and event["id"].startswith("evt_")
    assert event["data"] == {
        "message_id": saved.id, "name": "Dana Smith", "callback_number": "+14155550100",
        "message": "Please call me about my bill.", "department": None, "call_sid": None,
        "left_at": saved.created_at.isoformat(timespec="seconds"),
    }  # fmt: skip
    assert all(signed_by(r, SECRET) for r in receiver.requests)
    assert [(row.state, row.attempts) for row in rows] == [("delivered", 3), ("delivered", 1)]
    assert replica.counted("failed") == 2 and replica.counted("delivered") == 2 and replica.counted("dead") == 0


async def test_every_send_is_bounded_in_time_and_a_silent_receiver_is_retried(
    notify_settings: Callable[..., Settings],
) -> None:
    async with Receiver(hold=True) as receiver:
        async with Notifying(notify_settings(receiver.url), timings=replace(FAST, send_timeout=0.2)) as replica:
            await replica.message()
            # The first request is still held when the same event is tried again: the send gave up.
            await receiver.wait(lambda r: len(r.requests) >= 2)
            assert receiver.held == 2 and len({r.event["id"] for r in receiver.requests}) == 1
            receiver.release()
            (row,) = await replica.settled()
    assert row.state == "delivered" and row.last_error is None and replica.counted("failed") >= 1


async def test_an_event_waits_while_an_earlier_one_to_the_same_destination_is_retried(
    notify_settings: Callable[..., Settings],
) -> None:
    clock = JumpingClock(T0)
    async with Receiver(statuses=[500, 500, 500]) as receiver:
        async with Notifying(notify_settings(receiver.url), timings=JUMPING, clock=clock, deliver=False) as replica:
            await replica.message("First.")
            await replica.message("Second.")  # due at once, behind one that will fail three times
            replica.delivery.start()
            await receiver.wait(lambda r: len(r.delivered()) == 2)
    sent = [(r.event["data"]["message"], r.status) for r in receiver.requests]
    assert sent == [("First.", 500)] * 3 + [("First.", 200), ("Second.", 200)]
    assert len(clock.jumps) == 3  # the second waited out the first's three retries


async def test_a_failing_destination_is_retried_from_2_s_doubling_to_an_hour_for_a_day_then_dead(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The production timings and retry window, on a clock that jumps to each next try."""
    clock = JumpingClock(T0)
    async with Receiver(statuses=[500] * 100) as receiver:
        settings = make_settings(database_url=f"sqlite:///{tmp_path / 'records.sqlite3'}", data_dir=tmp_path,
                                 notify_webhook_secret=SECRET, notify_webhook_url=receiver.url)  # fmt: skip
        async with Notifying(settings, timings=JUMPING, clock=clock) as replica:
            await replica.message()
            (row,) = await replica.settled(timeout=120)
    waits = clock.jumps
    for n, waited in enumerate(waits):
        doubling = min(2.0 * 2**n, 3600.0)  # 2 s, 4 s, 8 s ... up to an hour, each ±20 %
        assert 0.8 * doubling <= waited <= 1.2 * doubling, (n, waited)
    day = timedelta(days=1).total_seconds()
    assert sum(waits[:-1]) < day <= sum(waits)  # the last try was the first a day or more after the event
    assert row.state == "dead" and row.attempts == len(receiver.requests) == len(waits) + 1
    assert row.done_at == clock.at and replica.counted("dead") == 1
    assert 30 <= row.attempts <= 40  # about 35 tries in the day


async def test_call_ended_counts_a_turn_written_after_the_end_and_new_gaps_are_announced(
    notify_settings: Callable[..., Settings], receiver: Receiver, encoder: Any
) -> None:
    settings = notify_settings(receiver.url, public_url="https://switchboard.example")
    async with Notifying(settings, encoder.encode) as replica:
        replica.store.outbox.call_ended_grace = timedelta(hours=1)  # held back until the grace is over
        record = replica.store.record
        record(CallReceived(sid(1), "+14155550199", T0))
        record(TurnDone(sid(1), "conv_1", 1, T0, "do you offer pet insurance?", "I don't know.", False, "answered",
                        True, None, [], {}, unanswered="do you offer pet insurance?"))  # fmt: skip
        record(CallEnded(sid(1), "caller_hung_up", "caller_hung_up", T0 + timedelta(seconds=40), 40.0))
        # The brain's replica writes the last turn after the bridge's replica wrote the end.
        record(TurnDone(sid(1), "conv_1", 2, T0 + timedelta(seconds=30), "is my dog covered then?", "I don't know.",
                        False, "answered", True, None, [], {}, unanswered="is my dog insured with you?"))  # fmt: skip
        await replica.store.recorder.flushed()
        await receiver.wait(lambda r: len(r.delivered()) == 1)
        async with replica.store.engine.begin() as conn:  # the grace is over
            await conn.execute(update(outbox).values(next_attempt_at=datetime.now(UTC)))
        await receiver.wait(lambda r: len(r.delivered()) == 2)
    gap, ended = receiver.delivered()
    assert gap["type"] == "gap.created" and gap["data"]["example"] == "do you offer pet insurance?"
    assert gap["data"]["call_sid"] == sid(1) and gap["data"]["review_url"] == "https://switchboard.example/admin/gaps"
    assert ended["type"] == "call.ended" and ended["created_at"] == "2026-11-20T09:30:40+00:00"
    assert ended["data"] == {
        "call_sid": sid(1), "caller": "+14155550199", "direction": "inbound", "message_id": None,
        "started_at": "2026-11-20T09:30:00+00:00", "ended_at": "2026-11-20T09:30:40+00:00", "duration_s": 40.0,
        "ended": "caller_hung_up", "transferred_to": None, "transfer": None, "turns": 2, "unanswered": True,
        "messages": 0,
        "review_url": f"https://switchboard.example/admin/calls/{sid(1)}",
    }  # fmt: skip
    # The paraphrase joined the first gap: one gap, one announcement.
    assert [r.event["type"] for r in receiver.requests] == ["gap.created", "call.ended"]


async def test_without_a_secret_nothing_is_sent_and_start_up_says_so(
    serve: Any, make_settings: Callable[..., Settings], receiver: Receiver, tmp_path: Path, caplog: Any
) -> None:
    settings = {"database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}", "notify_webhook_url": receiver.url}
    async with serve(**settings) as server:
        svc = server.app.extensions["switchboard"]
        async with asyncio.timeout(30):
            await svc.records.ready.wait()
        await svc.records.messages.add(
            name="Dana", callback_number="+14155550100", message="Hello.", call_sid=None, caller=None,
            conversation_id=None,
        )  # fmt: skip
        async with svc.records.engine.connect() as conn:
            queued = (await conn.execute(select(outbox))).all()
    assert queued == [] and receiver.requests == []
    lines = [r.getMessage() for r in caplog.records if "NOTIFY_WEBHOOK_SECRET" in r.getMessage()]
    assert lines == ["webhooks are off: NOTIFY_WEBHOOK_URL is set, NOTIFY_WEBHOOK_SECRET is not (none go unsigned)"]


# --- several replicas on one PostgreSQL -------------------------------------------------------------


async def test_a_lease_gives_each_event_to_exactly_one_of_two_workers(postgres: Any, make_settings: Any) -> None:
    from app.records.database import create_engine

    url = postgres.create_database("leases")
    settings = make_settings(database_url=url, notify_webhook_secret=SECRET, notify_webhook_url="http://a.example/")
    async with Notifying(settings, timings=replace(FAST, poll=3600)) as replica:
        await replica.delivery.stop()  # this test plays the two workers itself
        for n in range(30):
            await replica.message(f"message {n}")
    engines = [create_engine(settings) for _ in range(2)]
    won: list[int] = []
    try:
        for _ in range(30):

            async def take(engine: Any) -> Any:
                async with engine.begin() as conn:
                    row, _ = await lease_next(conn, "http://a.example/", datetime.now(UTC), timedelta(seconds=60))
                return row

            results = await asyncio.gather(*(take(engine) for engine in engines))
            taken = [row for row in results if row is not None]
            assert len(taken) == 1
            won.append(taken[0].id)
            async with engines[0].begin() as conn:  # settled: the next one is now the oldest pending
                await conn.execute(update(outbox).where(outbox.c.id == taken[0].id).values(state="delivered"))
    finally:
        for engine in engines:
            await engine.dispose()
    assert won == sorted(won) and len(set(won)) == 30


async def test_two_replicas_on_one_postgresql_deliver_each_event_once_and_in_order(
    postgres: Any, make_settings: Any, tmp_path: Path
) -> None:
    url = postgres.create_database("replicas")
    async with Receiver() as receiver:
        settings = make_settings(database_url=url, data_dir=tmp_path, notify_webhook_secret=SECRET,
                                 notify_webhook_url=receiver.url)  # fmt: skip
        async with Notifying(settings) as one, Notifying(settings) as two:
            saved = []
            for n in range(40):
                saved.append(await (one if n % 2 else two).message(f"message {n}"))
            await receiver.wait(lambda r: len(r.delivered()) == 40, timeout=60)
            rows = await one.settled()
            by = [one.counted("delivered"), two.counted("delivered")]
    ids = [event["data"]["message_id"] for event in receiver.delivered()]
    assert ids == [m.id for m in saved]  # each once, in order
    assert len(receiver.requests) == 40 and sum(by) == 40
    assert [(row.state, row.attempts) for row in rows] == [("delivered", 1)] * 40


# --- e-mail through a real SMTP server ------------------------------------------------------------


async def test_a_message_is_emailed_and_retried_while_the_smtp_server_is_down(
    notify_settings: Callable[..., Settings],
) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    mailbox = Mailbox()
    settings = notify_settings(
        notify_email_to="team@example.com, lead@example.com", smtp_url=f"smtp://127.0.0.1:{port}",
        public_url="https://switchboard.example",
    )  # fmt: skip
    try:
        async with Notifying(settings) as replica:
            saved = await replica.message("My router blinks red <b>since Monday</b>.", call_sid=sid(9))
            await until(lambda: replica.counted("failed", "email") >= 2)  # refused: the server is down
            await mailbox.start(sock)  # the server is back
            async with asyncio.timeout(20):
                await mailbox.arrived.wait()
            (row,) = await replica.settled()
    finally:
        await mailbox.stop()
    ((to, mail),) = mailbox.mails
    assert sorted(to) == ["lead@example.com", "team@example.com"]
    assert mail["Subject"] == "Message from Dana Smith (+14155550100)"
    assert mail["Message-ID"] == f"<{row.event_id}@switchboard>" and mail["From"] == "switchboard@switchboard.example"
    text = mail.get_content()
    assert "My router blinks red <b>since Monday</b>." in text and "Call back: +14155550100" in text
    assert f"https://switchboard.example/admin/calls/{sid(9)}" in text
    assert saved.created_at.strftime("%Y-%m-%d %H:%M") in text
    assert row.state == "delivered" and row.destination == "mailto:team@example.com,lead@example.com"


async def test_a_password_is_never_sent_to_an_smtp_server_without_starttls(
    notify_settings: Callable[..., Settings],
) -> None:
    sock = bound_socket()
    mailbox = Mailbox()
    await mailbox.start(sock)
    settings = notify_settings(notify_email_to="team@example.com",
                               smtp_url=f"smtp://switchboard:hunter2@127.0.0.1:{sock.getsockname()[1]}")  # fmt: skip
    try:
        async with Notifying(settings) as replica:
            await replica.message()
            await until(lambda: replica.counted("failed", "email") >= 1)
            (row,) = await replica.rows()
    finally:
        await mailbox.stop()
    assert mailbox.mails == [] and row.state == "pending"
    assert row.last_error == "the SMTP server offers no STARTTLS: the password is not sent in clear"


# --- dead events on the review page -----------------------------------------------------------------


async def test_an_event_past_its_retries_is_dead_on_the_review_page_and_can_be_sent_again(
    serve: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    import httpx

    auth = ("admin", "review-password")
    async with Receiver(statuses=[503, 503, 503]) as receiver:
        server = serve(database_url=f"sqlite:///{tmp_path / 'records.sqlite3'}", admin_password=auth[1],
                       notify_webhook_url=receiver.url, notify_webhook_secret=SECRET)  # fmt: skip
        svc = server.app.extensions["switchboard"]
        svc.delivery.timings = FAST
        svc.records.outbox.retry_for = timedelta(0)  # the first failure is the last try
        async with server, httpx.AsyncClient(base_url=server.http_url, auth=auth) as web:
            async with asyncio.timeout(30):
                await svc.records.ready.wait()
            for text in ("First.", "Second."):
                await svc.records.messages.add(name="Dana", callback_number="+14155550100", message=text,
                                               call_sid=None, caller=None, conversation_id=None)  # fmt: skip
            await receiver.wait(lambda r: len(r.requests) == 2)
            await until(lambda: svc.metrics.registry.get_sample_value(
                "switchboard_notify_deliveries_total", {"kind": "webhook", "outcome": "dead"}) == 2)  # fmt: skip
            page = await web.get("/admin/deliveries")
            forged = await web.post("/admin/deliveries/send-again", data={"csrf_token": "1.forged"})
            one = re.search(r'action="(/admin/deliveries/(\d+)/send-again)".*?value="([^"]+)"', page.text, re.S)
            assert one is not None
            again = await web.post(one.group(1), data={"csrf_token": one.group(3)})
            await receiver.wait(lambda r: len(r.requests) == 3)  # 503 again: dead again
            await until(lambda: svc.metrics.registry.get_sample_value(
                "switchboard_notify_deliveries_total", {"kind": "webhook", "outcome": "dead"}) == 3)  # fmt: skip
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            everything = await web.post("/admin/deliveries/send-again", data={"csrf_token": token.group(1)})
            await receiver.wait(lambda r: len(r.delivered()) == 2)
            after = await web.get("/admin/deliveries")
    assert page.status_code == 200 and "HTTP 503" in page.text and page.text.count("Send again") == 2
    assert '<span class="badge">2</span>' in page.text and "127.0.0.1" in page.text and "token=abc" not in page.text
    assert forged.status_code == 403 and again.status_code == everything.status_code == 303
    first = receiver.requests[0].event["id"]
    assert [r.event["id"] for r in receiver.requests].count(first) >= 2  # sent again: the same event, same id
    assert sorted(e["data"]["message"] for e in receiver.delivered()) == ["First.", "Second."]
    assert "Every event got through." in after.text


# --- python -m app notify test -------------------------------------------------------------------------


async def test_notify_test_pings_every_destination_and_prints_what_each_answered(tmp_path: Path) -> None:
    import os
    import sys

    mailbox = Mailbox()
    sock = bound_socket()
    await mailbox.start(sock)
    async with Receiver(statuses=[200, 500]) as ok, Receiver(statuses=[500]) as failing:
        env = {**os.environ, "DATA_DIR": str(tmp_path), "NOTIFY_WEBHOOK_SECRET": SECRET,
               "NOTIFY_WEBHOOK_URL": f"{ok.url},{failing.url}", "NOTIFY_EMAIL_TO": "team@example.com",
               "SMTP_URL": f"smtp://127.0.0.1:{sock.getsockname()[1]}"}  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "notify", "test", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    await mailbox.stop()
    lines = out.decode().splitlines()
    assert process.returncode == 1, err.decode()
    assert lines[0].startswith(f"ok      http://127.0.0.1:{ok.port}/…  200 'thanks'")
    assert lines[1] == f"FAILED  http://127.0.0.1:{failing.port}/…  HTTP 500 'try again later'"
    assert lines[2].startswith("ok      mailto:team@example.com  250")
    (ping,) = [r for r in ok.requests]
    assert ping.event["type"] == "ping" and signed_by(ping, SECRET) and not signed_by(ping, "another")
    ((_, mail),) = mailbox.mails
    assert mail["Subject"] == "Switchboard test e-mail"


# --- retention ------------------------------------------------------------------------------------------


async def test_retention_deletes_events_done_before_the_window_and_the_review_page_lists_the_rest(
    notify_settings: Callable[..., Settings], refused: str
) -> None:
    from app.records.outbox import dead_events, waiting
    from app.records.retention import purge

    now = datetime.now(UTC)
    async with Notifying(notify_settings(f"http://{refused}/never")) as replica:
        await replica.delivery.stop()
        for _ in range(4):
            await replica.message()
        ids = [row.id for row in await replica.rows()]
        old = now - timedelta(days=31)
        async with replica.store.engine.begin() as conn:
            await conn.execute(update(outbox).where(outbox.c.id == ids[0]).values(state="delivered", done_at=old))
            await conn.execute(update(outbox).where(outbox.c.id == ids[1]).values(state="dead", done_at=old))
            await conn.execute(update(outbox).where(outbox.c.id == ids[2]).values(state="delivered", done_at=now))
        async with replica.store.engine.connect() as conn:  # what the review page shows
            (queue,) = await waiting(conn)
            (dead,) = await dead_events(conn, 10)
        gone = await purge(replica.store.engine, 30, now)
        left = [(row.id, row.state) for row in await replica.rows()]
    assert gone["events"] == 2 and left == [(ids[2], "delivered"), (ids[3], "pending")]
    assert (queue.pending, queue.destination.shown) == (1, f"http://{refused}/…") and dead.id == ids[1]


# --- whole calls through the real routes -------------------------------------------------------------


@pytest.fixture
def notify_call(call_settings: dict[str, Any], tmp_path: Path) -> Callable[[Receiver], dict[str, Any]]:
    """A phone server with its own records store, sending webhooks to `receiver`."""

    def make(receiver: Receiver) -> dict[str, Any]:
        return {**call_settings, "database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}",
                "notify_webhook_url": receiver.url, "notify_webhook_secret": SECRET}  # fmt: skip

    return make


async def records_ready(phone: Any) -> None:
    """Messages are offered once the records store is open (it opens in the background)."""
    async with asyncio.timeout(30):
        await phone.svc.records.ready.wait()


MESSAGE = {"name": "Dana Smith", "callback_number": "(415) 555-0100", "message": "Please call me about my bill."}


async def test_a_call_that_leaves_a_message_announces_it_and_its_end_signed_to_the_receiver(
    serve, notify_call, fake_elevenlabs, fake_model, twilio_api, receiver: Receiver
) -> None:
    from app.testing.fake_openai import Reply
    from tests.support.phone import phone_call

    fake_model.queue(
        Reply(tokens=[], tool_calls=[("take_message", json.dumps(MESSAGE))]),
        Reply.text("I've passed that on: someone will call you back."),
    )
    async with phone_call(serve, notify_call(receiver), fake_elevenlabs, twilio_api) as phone:
        phone.svc.records.outbox.call_ended_grace = timedelta(0)
        await records_ready(phone)
        answer = await phone.client.ask("can I leave a message for billing?")
        await receiver.wait(lambda r: len(r.delivered()) == 1)
        await phone.caller.hang_up()
        await receiver.wait(lambda r: len(r.delivered()) == 2)
        sid = phone.caller.call_sid
        caller = phone.caller.caller
        async with phone.svc.records.engine.connect() as conn:
            recorded = await get_call(conn, sid)
    assert answer.text == "I've passed that on: someone will call you back."
    left, ended = receiver.requests
    assert left.event["type"] == "message.created" and ended.event["type"] == "call.ended"
    message = left.event["data"]
    assert message["callback_number"] == "+14155550100" and message["call_sid"] == sid
    assert message["message"] == "Please call me about my bill." and message["name"] == "Dana Smith"
    data = ended.event["data"]
    assert data["call_sid"] == sid and data["caller"] == caller and data["ended"] == "caller_hung_up"
    assert data["turns"] == 1 and data["messages"] == 1 and data["unanswered"] is False
    assert recorded is not None and data["duration_s"] == round(recorded.call.duration_s, 1)
    assert data["started_at"] == recorded.call.started_at.isoformat(timespec="seconds")
    assert data["review_url"] == f"https://switchboard.example/admin/calls/{sid}"
    for request in (left, ended):
        assert request.headers["Content-Type"] == "application/json"
        assert signed_by(request, SECRET) and not signed_by(request, "another-secret")


async def test_a_transferred_call_announces_its_end_as_a_transfer(
    serve, notify_call, fake_elevenlabs, fake_model, twilio_api, receiver: Receiver
) -> None:
    from app.testing.fake_openai import Reply
    from app.testing.twilio_dial import Colleague
    from tests.support.config import TARGETS
    from tests.support.phone import phone_call

    line = "Of course, I'll put you through to our sales team now."
    fake_model.queue(Reply.text(line, tool_calls=[("transfer_call", '{"department": "sales"}')]), Reply(tokens=[]))
    twilio_api.colleagues[TARGETS["sales"]] = Colleague("takes")  # someone in sales answers
    async with phone_call(serve, notify_call(receiver), fake_elevenlabs, twilio_api) as phone:
        await records_ready(phone)
        await phone.client.ask("can I talk to someone in sales?")
        await phone.speak(0.3)
        await twilio_api.call_updates.wait(1)
        await phone.caller.wait_closed()  # Twilio stopped the stream of the redirected call
        await receiver.wait(lambda r: len(r.delivered()) == 1)  # after the grace for late records
        sid = phone.caller.call_sid
        async with phone.svc.records.engine.connect() as conn:
            recorded = await get_call(conn, sid)
    (ended,) = receiver.requests
    assert ended.event["type"] == "call.ended" and signed_by(ended, SECRET)
    data = ended.event["data"]
    assert data["call_sid"] == sid and data["ended"] == "transferred" and data["transferred_to"] == "sales"
    assert data["transfer"] == {"department": "sales", "result": "connected"}
    assert recorded is not None and recorded.call.end_reason == "transferred"
    assert recorded.call.ended_how == "transferred to sales"


async def test_a_slow_receiver_never_delays_a_call(serve, notify_call, fake_elevenlabs, fake_model, twilio_api) -> None:
    from app.testing.fake_openai import Reply
    from app.testing.twilio_caller import ulaw_frames
    from tests.support.phone import phone_call

    fake_model.queue(
        Reply(tokens=[], tool_calls=[("take_message", json.dumps(MESSAGE))]),
        Reply.text("I've passed that on."),
        Reply.text("Autopay takes five dollars off every monthly bill."),
    )
    async with Receiver(hold=True) as receiver:  # takes 30 s to answer
        async with phone_call(serve, notify_call(receiver), fake_elevenlabs, twilio_api) as phone:
            phone.svc.delivery.timings = replace(FAST, send_timeout=60.0)  # longer than the receiver takes
            await records_ready(phone)
            await phone.client.ask("can I leave a message for billing?")
            await receiver.wait(lambda r: r.held == 1)  # the message.created request is waiting on the receiver
            answer = await phone.client.ask("how much is the autopay discount?")
            spoken = await phone.speak(0.5, event_id=3)
            said = await phone.caller.send_audio(ulaw_frames(0.5))
            await phone.caller.wait_for(lambda: len(phone.caller.media) >= len(spoken))
            await phone.conv.wait_for(lambda: phone.conv.user_audio[-len(said) :] == said)
            still_waiting = receiver.held
            receiver.release()
            await receiver.wait(lambda r: len(r.delivered()) == 1)
    assert answer.text == "Autopay takes five dollars off every monthly bill."
    assert phone.caller.media[-len(spoken) :] == spoken
    assert still_waiting == 1  # all of that happened while the receiver sat on the request


# --- a server killed between "saved" and "sent" ----------------------------------------------------------


async def test_a_server_killed_after_the_message_is_saved_delivers_it_after_restart(
    fake_model, shared_data_dir, kb_index, tmp_path: Path
) -> None:
    import signal

    import httpx

    from app.records.database import create_engine
    from app.testing.fake_openai import Reply
    from app.testing.speech_engine import SpeechEngineClient
    from tests.support.config import SECRET as BRAIN_SECRET
    from tests.support.servers import AppProcess

    sock = bound_socket()  # the receiver is down: connections are refused until it serves
    receiver = Receiver()
    records = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    env = {"DATA_DIR": str(shared_data_dir), "INDEX_DIR": str(kb_index), "DATABASE_URL": records,
           "SHARED_SECRET": BRAIN_SECRET, "OPENAI_BASE_URL": fake_model.base_url, "OPENAI_MODEL": "fake-model",
           "NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{sock.getsockname()[1]}/hook", "NOTIFY_WEBHOOK_SECRET": SECRET,
           "LOG_LEVEL": "WARNING", "ADMIN_PASSWORD": "pw"}  # fmt: skip
    server = AppProcess(env, tmp_path)  # restarted on the same socket

    async def serving() -> None:
        await server.start()

        async def reviewing() -> bool:  # the review page answers 503 until the records store is open
            async with httpx.AsyncClient() as web:
                return (await web.get(f"{server.url}/admin/deliveries", auth=("admin", "pw"))).status_code == 200

        await until(reviewing, what="the records store open", every=0.1)

    async def queued() -> list[Any]:
        engine = create_engine(Settings(_env_file=None, database_url=records))
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(select(outbox)))
        finally:
            await engine.dispose()

    fake_model.queue(
        Reply(tokens=[], tool_calls=[("take_message", json.dumps(MESSAGE))]),
        Reply.text("I've passed that on."),
    )
    try:
        await serving()
        ws_url = server.url.replace("http://", "ws://")
        async with await SpeechEngineClient.open(f"{ws_url}/ws", shared_secret=BRAIN_SECRET) as client:
            await client.init("conv_killed")
            answer = await client.ask("can I leave a message?")
        # Saved with its event, and tried twice: the next try is seconds away, so the kill most likely
        # finds no send in flight (if it does, that send's lease must lapse first: slower, still right).
        await until(lambda: _tried(queued, 2))
        server.signal(signal.SIGKILL)
        await asyncio.to_thread(server.wait, 10)
        (before,) = await queued()
        await receiver.start(sock)
        await serving()
        await receiver.wait(lambda r: len(r.delivered()) == 1, timeout=120)
        await until(lambda: _tried(queued, 3, "delivered"))
    finally:
        await asyncio.to_thread(server.stop)
        await receiver.stop()
    (after,) = await queued()
    assert answer.text == "I've passed that on."
    assert before.state == "pending" and after.state == "delivered"
    (event,) = receiver.delivered()
    assert event["id"] == before.event_id and event["type"] == "message.created"
    assert event["data"]["message"] == "Please call me about my bill." and signed_by(receiver.requests[-1], SECRET)


async def _tried(queued: Callable[[], Any], attempts: int, state: str = "pending") -> bool:
    rows = await queued()
    return len(rows) == 1 and rows[0].attempts >= attempts and rows[0].state == state and rows[0].lease_until is None
