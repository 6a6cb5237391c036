"""Back to the agent: Twilio posting the `<Dial action>` (no answer) → the agent's first words back on
the caller's line, with a one-way network delay of 80 ms on every leg (Twilio ⇄ Switchboard: the
dial action, the new stream's upgrade and every frame; Switchboard ⇄ ElevenLabs: the signed-URL
request, the conversation's upgrade and every frame), both ways, put in by the stand-ins.

One server, CALLS calls one at a time: each caller presses 0, the warm transfer to sales rings out
(the Twilio stand-in waits RING_SECONDS, then posts the dial action with DialCallStatus=no-answer and
opens the `<Connect><Stream>` it is answered with), and the time runs until the first frame of the
agent's apology reaches the caller. The issue names no bar: the p50 goes in the closing note.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import uvloop

from app import create_app
from app.settings import Settings
from app.testing.fake_elevenlabs import FakeElevenLabs
from app.testing.fake_twilio_api import FakeTwilioApi
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import TwilioCaller
from app.testing.twilio_dial import Colleague

DELAY_S = 0.08
CALLS = 20
API_KEY = "bench-elevenlabs-key"
ENGINE_ID = "seng_bench"
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-twilio-token"
PUBLIC_URL = "https://handoff-bench.example"
SALES = "+12025550143"
DEPARTMENTS = f"""
[departments.sales]
number = "{SALES}"
time_zone = "America/New_York"
hours = {{ {", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))} }}
"""
DATA = Path("data").resolve()  # the product's default DATA_DIR: the embedding model is kept there


async def one_call(server: LiveServer, fake: FakeElevenLabs, api: FakeTwilioApi) -> float:
    """Seconds from the dial action leaving Twilio to the first frame of the agent's words back."""
    frames: list[float] = []  # when each frame reached the caller, on any stream of the call
    caller = TwilioCaller(
        server.http_url,
        PUBLIC_URL,
        AUTH_TOKEN,
        account_sid=ACCOUNT_SID,
        delay=DELAY_S,
        api=api,
        on_media=lambda _: frames.append(time.perf_counter()),
        record=False,
    )
    dials = len(api.dials)
    async with caller:
        await caller.dial()
        await caller.open_stream()
        await caller.connected()
        await caller.start()
        assert await server.app.extensions["switchboard"].registry.find(call_sid=caller.call_sid, timeout=5)
        await caller.dtmf("0")
        async with asyncio.timeout(30):
            await api.wait_for(lambda: len(api.dials) > dials)
        dialled = api.dials[-1]
        assert dialled.status == "no-answer" and dialled.leg is not None, dialled
        back = dialled.leg
        await back.wait_for(lambda: any(at > dialled.action_at for at in frames), timeout=30)
        await back.hang_up()
    count = len(fake.conversations)
    async with asyncio.timeout(30):
        while not fake.conversations[count - 1].closed:  # noqa: ASYNC110 - the call over, before the next
            await asyncio.sleep(0.01)
    return next(at for at in frames if at > dialled.action_at) - dialled.action_at


async def bench(tmp: Path) -> list[float]:
    departments = tmp / "departments.toml"
    departments.write_text(DEPARTMENTS)
    async with FakeElevenLabs(API_KEY, ENGINE_ID, delay=DELAY_S) as fake, FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        fake.engine["overrides"] = {"first_message": True}  # the greeting and the apology, as make configure sets it
        api.colleagues[SALES] = Colleague("no_answer")
        settings = Settings(
            _env_file=None,
            public_url=PUBLIC_URL,
            twilio_auth_token=AUTH_TOKEN,
            twilio_account_sid=ACCOUNT_SID,
            twilio_api_base_url=api.base_url,
            elevenlabs_api_key=API_KEY,
            elevenlabs_base_url=fake.base_url,
            speech_engine_id=ENGINE_ID,
            shared_secret="bench-secret",
            departments_file=departments,
            ring_seconds=1,
            data_dir=DATA,
            index_dir=tmp / "index",
            record_calls=False,
            log_level="WARNING",
        )
        async with LiveServer(create_app(settings)) as server:
            await one_call(server, fake, api)  # warm-up: first connections
            return [await one_call(server, fake, api) for _ in range(CALLS)]


def test_dial_action_to_the_agents_first_words_back(tmp_path: Path) -> None:
    timings = uvloop.run(bench(tmp_path))
    p50 = statistics.median(timings) * 1000
    spread = [round(t * 1000) for t in sorted(timings)]
    print(
        f"\nback to the agent, dial action (no answer) → first frame of the agent's words, "
        f"{DELAY_S * 1000:.0f} ms per network leg, {CALLS} calls: p50 {p50:.0f} ms\n  {spread}"
    )
    assert len(timings) == CALLS
