"""Call-back punctuality for `make bench` (a note, not a bar): how far from its scheduled time a
call-back is placed, p50 and max over 50 call-backs scheduled a few seconds apart at random.

The dialer runs as in the server (its own task, the records store on SQLite, the system clock) and
places calls through the twilio client against the REST stand-in, which runs on a thread and event
loop of its own (as Twilio is elsewhere); "placed" is when the stand-in takes the create request.
Every callee is busy, so nothing but placing is measured. The call-backs are written to the store
as `python -m app call-back` writes them, without waking the dialer, which finds them by itself.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop
from quart import Quart

from app.callbacks.dialer import Dialer, Planner
from app.calls.admission import CallSlots
from app.clock import CallClock
from app.departments.directory import Directory
from app.observability import Metrics
from app.records.store import RecordsStore
from app.settings import Settings
from app.testing.fake_twilio_api import FakeTwilioApi
from app.testing.live_server import LiveServer
from app.testing.twilio_outbound import Callee

CALL_BACKS = 50
SPREAD_S = 20.0
ACCOUNT_SID = "AC" + "7" * 32
TOKEN = "bench-token"


def _callbacks_server() -> Quart:
    """Where Twilio's status callbacks go: taken and dropped (the bench measures placing only)."""
    app = Quart("callbacks")

    @app.get("/healthz")
    async def healthz() -> tuple[str, int]:
        return "ok", 200

    @app.post("/callback/status")
    async def status() -> tuple[str, int]:
        return "", 204

    return app


class TwilioElsewhere:
    """The REST stand-in and the status callbacks' receiver, on a thread and event loop of their own."""

    def __init__(self, numbers: list[str]) -> None:
        self.numbers = numbers
        self.twilio: FakeTwilioApi | None = None
        self._up = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="twilio-elsewhere")

    async def _serve(self) -> None:
        async with FakeTwilioApi(ACCOUNT_SID, TOKEN) as twilio, LiveServer(_callbacks_server()) as status:
            twilio.app_url = twilio.app_public_url = status.http_url
            for number in self.numbers:
                twilio.callees[number] = Callee("busy")
            self.twilio = twilio
            self._loop, self._down = asyncio.get_running_loop(), asyncio.Event()
            self._up.set()
            await self._down.wait()

    def __enter__(self) -> FakeTwilioApi:
        self._thread.start()
        self._up.wait(30)
        assert self.twilio is not None
        return self.twilio

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._down is not None
        self._loop.call_soon_threadsafe(self._down.set)
        self._thread.join(30)


async def _lateness(tmp: Path) -> list[float]:
    numbers = [f"+1312555{n:04d}" for n in range(100, 100 + CALL_BACKS)]
    with TwilioElsewhere(numbers) as twilio:
        settings = Settings(
            _env_file=None,
            data_dir=tmp,
            public_url="http://127.0.0.1",
            twilio_account_sid=ACCOUNT_SID,
            twilio_auth_token=TOKEN,
            twilio_api_base_url=twilio.base_url,
            twilio_phone_number="+12025550100",
            callback_hours="00:00-24:00",
            departments_file=None,
        )
        records = RecordsStore(settings.model_copy(update={"record_calls": False}), Metrics())
        await records.start()
        await records.ready.wait()
        clock = CallClock()
        planner = Planner(settings, Directory(settings, clock))
        dialer = Dialer(
            settings, Metrics(), records.callbacks, planner, clock, CallSlots(10 * CALL_BACKS), records.ready
        )
        dialer.start()
        due: dict[str, datetime] = {}
        try:
            start = datetime.now(UTC) + timedelta(seconds=1)
            for number in numbers:
                message = await records.messages.add(
                    name="Dana", callback_number=number, message="Call me", call_sid=None, caller=None,
                    conversation_id=None,
                )  # fmt: skip
                at = start + timedelta(seconds=random.uniform(0, SPREAD_S))
                callback = await records.callbacks.schedule(message.id, at, planner.plan, datetime.now(UTC))
                assert callback is not None and callback.due_at is not None
                due[number] = callback.due_at
            async with asyncio.timeout(SPREAD_S + 30):
                while len(twilio.placed) < CALL_BACKS:  # noqa: ASYNC110 (the stand-in is on another loop)
                    await asyncio.sleep(0.1)
        finally:
            await dialer.stop()
            await records.stop()
        return [placed.received_at - due[placed.to].timestamp() for placed in twilio.placed]


def test_call_backs_are_placed_on_time(tmp_path: Path) -> None:
    late = uvloop.run(_lateness(tmp_path))
    print(
        f"\n{CALL_BACKS} call-backs scheduled over {SPREAD_S:.0f} s: placed after their time by "
        f"p50 {statistics.median(late) * 1000:.1f} ms, max {max(late) * 1000:.1f} ms "
        f"(min {min(late) * 1000:.1f} ms)"
    )
    assert len(late) == CALL_BACKS and min(late) >= 0
