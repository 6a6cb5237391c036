"""Several replicas, for real: `python -m app` processes behind nginx, sharing one redis-server and one
PostgreSQL, with Twilio, ElevenLabs and the model played by the stand-ins in this process.

nginx round-robins; a test pins a leg of a call to one replica with the `X-Replica` header (a map in
the test's own nginx config), so webhook, media stream and brain connection land where it says.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.testing.fake_elevenlabs import FakeConversation
from app.testing.fake_openai import Reply
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_caller import TwilioCaller, ulaw_frames
from app.testing.twilio_dial import Colleague
from tests.support.config import ACCOUNT_SID, API_KEY, ENGINE_ID, PUBLIC_URL, SECRET, TARGETS, TWILIO_TOKEN
from tests.support.phone import CallUpdates, dialled, speak, tool_names, tool_results
from tests.support.processes import children, running
from tests.support.servers import AppProcess, nginx_in_front
from tests.support.waiting import until

LEASE_S = 3


@pytest.fixture
def replica_env(
    fresh_redis, postgres, fake_elevenlabs, twilio_api, fake_model, shared_data_dir, kb_index, tmp_path
) -> dict[str, str]:
    """What every replica is started with: the same peers, the same Redis and PostgreSQL."""
    return {
        "PUBLIC_URL": PUBLIC_URL,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_API_BASE_URL": twilio_api.base_url,
        "ELEVENLABS_API_KEY": API_KEY,
        "ELEVENLABS_BASE_URL": fake_elevenlabs.base_url,
        "SPEECH_ENGINE_ID": ENGINE_ID,
        "SHARED_SECRET": SECRET,
        "OPENAI_BASE_URL": fake_model.base_url,
        "OPENAI_MODEL": "fake-model",
        "OPENAI_API_KEY": "sk-fake",
        "TRANSFER_TARGETS": ",".join(f"{k}={v}" for k, v in TARGETS.items()),
        "REDIS_URL": fresh_redis.url,
        "DATABASE_URL": postgres.create_database(f"replicas_{uuid.uuid4().hex[:10]}"),
        "DATA_DIR": str(shared_data_dir),  # the exported embedding model; records go to PostgreSQL
        "INDEX_DIR": str(kb_index),
        "CALL_LEASE_SECONDS": str(LEASE_S),
        "LOG_LEVEL": "INFO",
    }


@dataclass
class Cluster:
    url: str
    replicas: list[AppProcess]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def replica_id(self, n: int) -> str:
        return httpx.get(f"{self.replicas[n].url}/readyz", timeout=5).json()["replica"]


def _own_index(env: dict[str, str], root: Path, n: int) -> dict[str, str]:
    """Each replica opens its own copy of the embedded index (a Chroma server is how replicas on
    several machines share one; here a copy keeps two processes off one embedded store)."""
    index = root / f"index-{n}"
    shutil.copytree(env["INDEX_DIR"], index)
    return {**env, "INDEX_DIR": str(index)}


@asynccontextmanager
async def cluster(env: dict[str, str], root: Path, count: int = 2, **overrides: str) -> AsyncIterator[Cluster]:
    replicas = [AppProcess(_own_index({**env, **overrides}, root, n), root) for n in range(count)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        with nginx_in_front([r.port for r in replicas]) as url:
            yield Cluster(url, replicas)
    finally:
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in replicas))


def pin(n: int) -> dict[str, str]:
    return {"X-Replica": str(n)}


@asynccontextmanager
async def call(
    front: Cluster, fake: Any, *, webhook: int, stream: int, brain: int, index: int = 0, api: Any = None
) -> AsyncIterator[tuple[TwilioCaller, FakeConversation, SpeechEngineClient]]:
    """A call whose webhook, stream and brain reach the replicas named. The `index`-th conversation
    is the call's: opened when the webhook arrived, or, when the stream reached another replica,
    the one that replica opened (the next one; the webhook's is closed unused)."""
    async with TwilioCaller(front.url, PUBLIC_URL, TWILIO_TOKEN, realtime=True, api=api) as caller:
        hook = await caller.dial(headers=pin(webhook))
        assert hook.verbs == ["Connect"], hook.body
        await caller.open_stream(headers=pin(stream))
        await caller.connected()
        await caller.start()
        conv = await fake.conversation(index if webhook == stream else index + 1)
        headers = {"x-call-sid": caller.call_sid, **pin(brain)}
        async with await SpeechEngineClient.open(
            f"{front.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET, headers=headers
        ) as client:
            await client.init(conv.conversation_id)
            yield caller, conv, client


AUTOPAY = "Autopay takes five dollars off every monthly bill."


async def goes_on(caller: TwilioCaller, conv: FakeConversation, client: SpeechEngineClient, event_id: int) -> None:
    """The call goes on: audio both ways, and the brain answers (the model is queued with AUTOPAY)."""
    sent = await caller.send_audio(ulaw_frames(0.2))
    await conv.wait_for(lambda: len(conv.user_audio) >= len(sent))
    heard = await speak(conv, 0.2, event_id=event_id)
    await caller.wait_for(lambda: len(caller.media) >= len(heard))
    answer = await client.ask("how much is the autopay discount?")
    assert answer.text == AUTOPAY


async def holder_of(env: dict[str, str], call_sid: str) -> str | None:
    client = Redis.from_url(env["REDIS_URL"], decode_responses=True)
    try:
        return await client.hget(f"sb:call:{call_sid}", "holder")
    finally:
        await client.aclose()


async def test_a_transfer_asked_by_the_brain_on_one_replica_happens_once_where_the_stream_is(
    replica_env, fake_elevenlabs, fake_model, twilio_api, tmp_path
) -> None:
    line = "Of course, I'll put you through to our sales team now."
    fake_model.queue(Reply.text(line, tool_calls=[("transfer_call", '{"department": "sales"}')]), Reply(tokens=[]))
    async with cluster(replica_env, tmp_path) as front:
        async with call(front, fake_elevenlabs, webhook=0, stream=1, brain=0, api=twilio_api) as (caller, conv, client):
            twilio_api.call_updates = CallUpdates(caller)
            assert await holder_of(replica_env, caller.call_sid) == await asyncio.to_thread(front.replica_id, 1)
            answer = await client.ask("can I talk to a real person about buying a plan?")
            assert answer.text == line
            audio = await speak(conv, 0.4, event_id=1)
            await twilio_api.call_updates.wait(1, timeout=20)
            await caller.wait_closed()  # the redirect ended the stream, as Twilio does
    # Both replicas have stopped, each once its actions under way were done: any second redirect
    # would have been made by now.
    ((sid, form),) = twilio_api.call_updates
    assert sid == caller.call_sid and dialled(form)[1] == [TARGETS["sales"]]
    marks, echoed, played = twilio_api.call_updates.heard[0]
    assert marks and set(marks) <= set(echoed), "redirected before the line's marks came back"
    assert played == len(audio)


async def test_keypad_zero_on_the_stream_replica_transfers_a_call_whose_brain_is_on_the_other(
    replica_env, fake_elevenlabs, fake_model, twilio_api, tmp_path
) -> None:
    fake_model.queue(
        Reply.text("Sure, what can I help you with?"),
        Reply(tokens=[], tool_calls=[("transfer_call", '{"department": "support"}')]),
        Reply.text("You're already being put through."),
    )
    async with cluster(replica_env, tmp_path) as front:
        async with call(front, fake_elevenlabs, webhook=1, stream=1, brain=0, api=twilio_api) as (caller, _, client):
            twilio_api.call_updates = CallUpdates(caller)
            # The brain, on the other replica, has found the call: a transfer is offered to the model.
            await client.ask("hello, I have a question")
            assert "transfer_call" in tool_names(fake_model.requests[0])
            await caller.dtmf("0")
            await twilio_api.call_updates.wait(1, timeout=20)
            # The brain is then asked for a transfer too: the shared claim refuses it, the keypad's
            # transfer having used the call's one.
            await client.ask("put me through to support")
            await caller.wait_closed()  # the redirect ended the stream, as Twilio does
    # The brain was refused (below), and both replicas have stopped: one redirect, the keypad's.
    ((sid, form),) = twilio_api.call_updates
    assert sid == caller.call_sid and dialled(form)[1] == [TARGETS["sales"]]
    assert "take_message" in tool_names(fake_model.requests[0])
    (result,) = tool_results(fake_model.requests[2])
    assert result["ok"] is False and "already been transferred" in result["error"]  # refused by the limit


async def test_admission_counts_calls_on_every_replica_and_a_killed_replicas_slots_lapse(
    replica_env, fake_elevenlabs, twilio_api, tmp_path
) -> None:
    async with cluster(replica_env, tmp_path, MAX_CONCURRENT_CALLS="2") as front:
        async with (
            call(front, fake_elevenlabs, webhook=0, stream=0, brain=0, index=0) as (first, _, _),
            call(front, fake_elevenlabs, webhook=1, stream=1, brain=1, index=1),
        ):
            for n in (0, 1):
                third = TwilioCaller(front.url, PUBLIC_URL, TWILIO_TOKEN)
                busy = await third.dial(headers=pin(n))
                assert busy.verbs == ["Say", "Hangup"] and "busy" in busy.said[0], busy.body
            front.replicas[0].signal(signal.SIGKILL)  # replica 0 dies with the first call on it
            await asyncio.to_thread(front.replicas[0].wait, 10)
            await first.wait_closed(10)

            async def admitted() -> bool:
                return (await TwilioCaller(front.url, PUBLIC_URL, TWILIO_TOKEN).dial(headers=pin(1))).verbs == [
                    "Connect"
                ]

            # The dead replica's lease lapses on Redis's clock.
            await until(admitted, timeout=LEASE_S * 4, what="a call admitted", every=0.25)


async def test_a_draining_replica_finishes_its_call_hands_new_calls_on_and_then_stops(
    replica_env, fake_elevenlabs, fake_model, twilio_api, tmp_path
) -> None:
    fake_model.queue(Reply.text(AUTOPAY))
    async with cluster(replica_env, tmp_path) as front:
        draining = front.replicas[0]
        async with call(front, fake_elevenlabs, webhook=0, stream=0, brain=0) as (caller, conv, client):
            draining.signal(signal.SIGTERM)

            async def unready() -> bool:
                return await draining.status() == 503

            await until(unready, timeout=10, what="/readyz 503 while draining", every=0.1)
            await goes_on(caller, conv, client, event_id=7)
            # A new call reaching the draining replica is handed on, and taken by the other.
            newcomer = TwilioCaller(front.url, PUBLIC_URL, TWILIO_TOKEN)
            handed = await newcomer.dial(headers=pin(0))
            assert handed.verbs == ["Redirect"] and handed.redirect_url.endswith("/incoming-call?attempt=2")
            taken = await newcomer.follow_redirect(headers=pin(1))
            assert taken.verbs == ["Connect"]
            assert draining.process is not None and draining.process.poll() is None  # still serving its call
            await caller.hang_up()
        assert await asyncio.to_thread(draining.wait, 30) == 0  # drained: it stops by itself


@pytest.mark.parametrize("rest", [True, False], ids=["rest-redirect", "connect-action"])
async def test_when_drain_seconds_run_out_the_caller_hears_a_goodbye_before_the_line_closes(
    replica_env, fake_elevenlabs, twilio_api, tmp_path, rest
) -> None:
    env = _own_index(replica_env, tmp_path, 0) | {"DRAIN_SECONDS": "1"}
    if not rest:
        del env["TWILIO_ACCOUNT_SID"]
    server = AppProcess(env, tmp_path)
    await server.start()
    try:
        async with TwilioCaller(server.url, PUBLIC_URL, TWILIO_TOKEN, realtime=True, api=twilio_api) as caller:
            twilio_api.call_updates = CallUpdates(caller)
            await caller.call(0.2)
            await fake_elevenlabs.conversation()
            server.signal(signal.SIGTERM)
            if rest:
                await twilio_api.call_updates.wait(1, timeout=20)
                await caller.wait_closed(20)  # Twilio stops the stream, then plays the goodbye
                ((_, form),) = twilio_api.call_updates
                goodbye = form["Twiml"]
            else:
                assert await caller.wait_closed(20) == 1000
                goodbye = (await caller.connect_action()).body
        assert "I have to end our call here" in goodbye and "<Hangup" in goodbye
        assert await asyncio.to_thread(server.wait, 30) == 0
    finally:
        server.stop()


async def test_redis_going_away_keeps_calls_up_turns_new_ones_away_and_recovers_by_itself(
    replica_env, redis, fake_elevenlabs, fake_model, twilio_api, tmp_path
) -> None:
    fake_model.queue(Reply.text(AUTOPAY))
    async with cluster(replica_env, tmp_path, count=1, FALLBACK_NUMBER="+15550001111") as front:
        async with call(front, fake_elevenlabs, webhook=0, stream=0, brain=0) as (caller, conv, client):
            redis.stop()
            await goes_on(caller, conv, client, event_id=3)

            async def unready() -> httpx.Response | None:
                async with httpx.AsyncClient() as web:
                    response = await web.get(f"{front.replicas[0].url}/readyz")
                return response if response.status_code != 200 else None

            ready = await until(unready, timeout=10, what="/readyz saying why", every=0.2)  # within a heartbeat
            turned_away = await TwilioCaller(front.url, PUBLIC_URL, TWILIO_TOKEN).dial()
            assert turned_away.dialled == ["+15550001111"]
            redis.start()

            async def admitted() -> bool:
                return (await TwilioCaller(front.url, PUBLIC_URL, TWILIO_TOKEN).dial()).verbs == ["Connect"]

            await until(admitted, timeout=20, what="a call admitted again", every=0.25)  # on its own
            await caller.hang_up()
    assert ready.status_code == 503 and "Redis unreachable" in ready.json()["reason"]


async def test_workers_run_as_replicas_on_one_port_and_stop_together(replica_env, tmp_path) -> None:
    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", env={**os.environ, **replica_env, "WORKERS": "2", "REDIS_URL": ""}, cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await refused.communicate()
    assert refused.returncode == 1 and "WORKERS=2 needs REDIS_URL" in err.decode()
    server = AppProcess(_own_index(replica_env, tmp_path, 0) | {"WORKERS": "2"}, tmp_path)
    await server.start()
    try:
        assert server.process is not None
        workers = children(server.process.pid)
        assert len(workers) == 2
        client = Redis.from_url(replica_env["REDIS_URL"], decode_responses=True)
        try:

            async def both_beating() -> bool:
                return await client.zcard("sb:replicas") >= 2

            await until(both_beating, timeout=10, what="both workers' heartbeats", every=0.1)
        finally:
            await client.aclose()
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 30) == 0
        assert not any(running(pid) for pid in workers)
    finally:
        server.stop()


SALES = "+12025550143"
AROUND_THE_CLOCK = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))


async def test_a_caller_nobody_in_sales_answers_comes_back_to_the_agent_on_either_replica(
    replica_env, fake_elevenlabs, fake_model, twilio_api, tmp_path
) -> None:
    """Each call's whisper, dial action and new stream reach the replica that did not hold it."""
    departments = tmp_path / "departments.toml"
    departments.write_text(
        f'[departments.sales]\nnumber = "{SALES}"\ntime_zone = "America/New_York"\nhours = {{ {AROUND_THE_CLOCK} }}\n'
    )
    twilio_api.colleagues[SALES] = Colleague("no_answer")
    fake_elevenlabs.engine["overrides"] = {"first_message": True}
    env = {**replica_env, "TRANSFER_TARGETS": "", "DEPARTMENTS_FILE": str(departments), "RING_SECONDS": "1"}
    async with cluster(env, tmp_path) as front:
        for stream, back in ((0, 1), (1, 0)):
            said, returned = await nobody_answers(front, fake_elevenlabs, fake_model, twilio_api, stream, back)
            assert said.startswith("Sorry, nobody in sales could take your call just now.")
            assert returned.webhook is not None and returned.webhook.parameters["transfer"] == "sales:no_answer"
    assert [dial.status for dial in twilio_api.dials] == ["no-answer", "no-answer"]


async def nobody_answers(
    front: Cluster, fake: Any, model: Any, api: Any, stream: int, back: int
) -> tuple[str, TwilioCaller]:
    """A call on replica `stream` asks for sales, nobody answers, and the whisper, the dial action
    and the new stream reach replica `back`: what the agent says first there, and that stream."""
    line = "Of course, I'll put you through to our sales team now."
    model.queue(Reply.text(line, tool_calls=[("transfer_call", '{"department": "sales"}')]), Reply(tokens=[]))
    where = {"/incoming-call": stream, "/media-stream": stream}  # the rest: `back`
    async with TwilioCaller(
        front.url, PUBLIC_URL, TWILIO_TOKEN, realtime=True, api=api, route=lambda path: pin(where.get(path, back))
    ) as caller:
        assert (await caller.dial()).verbs == ["Connect"]
        await caller.open_stream()
        await caller.connected()
        await caller.start()
        first = 2 * len(api.dials)  # each call before had two conversations: its first, and the one back
        conv = await fake.conversation(first)
        headers = {"x-call-sid": caller.call_sid, **pin(stream)}
        async with await SpeechEngineClient.open(
            f"{front.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET, headers=headers
        ) as client:
            await client.init(conv.conversation_id)
            assert (await client.ask("can I talk to someone about a faster plan?")).text == line
            where["/media-stream"] = back  # where Twilio's next stream on this call goes
            await speak(conv, 0.4, event_id=1)
            returned = await api.leg(caller.call_sid)
            again = await fake.conversation(first + 1)
            await returned.wait_for(lambda: bool(returned.media))  # the agent's first words, heard
            await returned.hang_up()
    return again.initiation["conversation_config_override"]["agent"]["first_message"], returned
