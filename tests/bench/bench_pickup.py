"""Pickup: Twilio's webhook arriving → the greeting's first audio frame at the caller, with a one-way
network delay of 80 ms on every leg (Twilio ⇄ Switchboard: the webhook, the stream's upgrade and
every frame; Switchboard ⇄ ElevenLabs: the signed-URL request, the conversation's upgrade and
every frame), both ways, put in by the stand-ins.

One server, CALLS calls with the conversation opened when the webhook arrives and CALLS with it
opened once the stream has started (as before), alternating, one call at a time. Bar: p50 with the
early start ≤ 0.7 × p50 without it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import uvloop
from quart import request

from app import create_app
from app.settings import Settings
from app.telephony.webhook import INCOMING_PATH
from app.testing.fake_elevenlabs import FakeConversation, FakeElevenLabs
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import TwilioCaller

DELAY_S = 0.08
CALLS = 20
BAR = 0.7
API_KEY = "bench-elevenlabs-key"
ENGINE_ID = "seng_bench"
AUTH_TOKEN = "bench-twilio-token"
PUBLIC_URL = "https://pickup-bench.example"
DATA = Path("data").resolve()  # the product's default DATA_DIR: the embedding model is kept there


async def pick_up(
    server: LiveServer, fake: FakeElevenLabs, arrivals: list[float], public_url: str = PUBLIC_URL
) -> tuple[float, FakeConversation]:
    """One call, hung up at the greeting: seconds from the webhook's arrival at the server to the
    greeting's first frame at the caller, and its conversation, closed before the next call."""
    heard = asyncio.Event()
    caller = TwilioCaller(
        server.http_url, public_url, AUTH_TOKEN, delay=DELAY_S, on_media=lambda _: heard.set(), record=False
    )
    async with caller:
        arrivals.clear()
        await caller.dial()
        await caller.open_stream()
        await caller.connected()
        await caller.start()
        async with asyncio.timeout(30):
            await heard.wait()
        first_frame = time.perf_counter()
        await caller.hang_up()
    conversation = fake.conversations[-1]
    async with asyncio.timeout(30):
        while not conversation.closed:  # noqa: ASYNC110 - the call over, before the next
            await asyncio.sleep(0.01)
    return first_frame - arrivals[0], conversation


async def one_call(server: LiveServer, fake: FakeElevenLabs, arrivals: list[float], early: bool) -> float:
    """Seconds to the greeting's first frame, with the early start on or off."""
    server.app.extensions["switchboard"].telephony.early.enabled = early
    return (await pick_up(server, fake, arrivals))[0]


async def bench(tmp: Path) -> dict[bool, list[float]]:
    timings: dict[bool, list[float]] = {True: [], False: []}
    async with FakeElevenLabs(API_KEY, ENGINE_ID, delay=DELAY_S) as fake:
        fake.engine["overrides"] = {"first_message": True}  # the greeting is allowed, as make configure sets it
        settings = Settings(
            _env_file=None,
            public_url=PUBLIC_URL,
            twilio_auth_token=AUTH_TOKEN,
            elevenlabs_api_key=API_KEY,
            elevenlabs_base_url=fake.base_url,
            speech_engine_id=ENGINE_ID,
            shared_secret="bench-secret",
            data_dir=DATA,
            index_dir=tmp / "index",
            record_calls=False,
            log_level="WARNING",
        )
        app = create_app(settings)
        arrivals: list[float] = []

        @app.before_request
        async def webhook_arrived() -> None:
            if request.path == INCOMING_PATH:
                arrivals.append(time.perf_counter())

        async with LiveServer(app) as server:
            for early in (True, False):  # warm-up: first connections, first greeting check
                await one_call(server, fake, arrivals, early)
            for _ in range(CALLS):
                for early in (True, False):
                    timings[early].append(await one_call(server, fake, arrivals, early))
    return timings


def test_pickup_with_and_without_the_early_start(tmp_path: Path) -> None:
    timings = uvloop.run(bench(tmp_path))
    early, late = (statistics.median(timings[key]) * 1000 for key in (True, False))
    spread = {key: [round(t * 1000) for t in sorted(values)] for key, values in timings.items()}
    print(
        f"\npickup, webhook → first greeting frame, {DELAY_S * 1000:.0f} ms per network leg, {CALLS} calls each: "
        f"early start p50 {early:.0f} ms, without {late:.0f} ms, ratio {early / late:.2f} (bar ≤ {BAR})"
        f"\n  early:   {spread[True]}\n  without: {spread[False]}"
    )
    assert early <= BAR * late
