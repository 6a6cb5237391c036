"""The brain WebSocket end to end: real Hypercorn, the fake Speech Engine client, the fake model."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from app.brain.spoken_fallback import NO_ANSWER
from app.brain.turn import APOLOGY_MID_ANSWER
from app.testing.fake_openai import Reply
from app.testing.speech_engine import SpeechEngineClient, mint_jwt
from tests.support.config import API_KEY, SECRET
from tests.support.model import model_settings


def counted(metrics: str, name: str, **labels: str) -> float:
    """A counter's total over the labels not given, as /metrics shows it."""
    families = text_string_to_metric_families(metrics)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def refused_status(url: str, **kw: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await SpeechEngineClient.open(url, **kw)  # type: ignore[arg-type]
    return refused.value.response.status_code


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({}, id="no-headers"),
        pytest.param({"shared_secret": "wrong"}, id="wrong-secret"),
        pytest.param({"shared_secret": SECRET}, id="secret-but-no-jwt"),
        pytest.param({"shared_secret": SECRET, "jwt": mint_jwt("sk_someone_else")}, id="bad-signature"),
        pytest.param({"shared_secret": SECRET, "jwt": mint_jwt(API_KEY, issued_at=time.time() - 3600)}, id="expired"),
        pytest.param({"shared_secret": SECRET, "jwt": mint_jwt(API_KEY, issuer="https://evil.example")}, id="issuer"),
        pytest.param({"shared_secret": SECRET, "jwt": "not.a.jwt"}, id="garbage-jwt"),
        pytest.param({"api_key": API_KEY}, id="jwt-but-no-secret"),
    ],
)
async def test_bad_credentials_get_401_and_no_session(serve, fake_model, credentials) -> None:
    async with serve(elevenlabs_api_key=API_KEY, **model_settings(fake_model)) as server:
        assert await refused_status(f"{server.ws_url}/ws", **credentials) == 401
        metrics = (await _get(server, "/metrics")).text
    assert counted(metrics, "switchboard_brain_rejected_total") == 1
    assert fake_model.requests == []


async def test_good_credentials_are_accepted(serve, fake_model) -> None:
    async with (
        serve(elevenlabs_api_key=API_KEY, **model_settings(fake_model)) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET) as client,
    ):
        await client.init()
        answer = await client.ask("hello?")
    assert answer.finals == 1 and answer.text == "You asked: hello?. Thank you for calling."


async def test_jwt_alone_is_enough_when_no_shared_secret(serve, fake_model) -> None:
    async with (
        serve(elevenlabs_api_key=API_KEY, shared_secret=None, **model_settings(fake_model)) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", api_key=API_KEY) as client,
    ):
        assert (await client.ask("hello?")).finals == 1


async def test_neither_configured_refuses_everyone(serve, fake_model) -> None:
    async with serve(shared_secret=None, **model_settings(fake_model)) as server:
        assert await refused_status(f"{server.ws_url}/ws") == 401
        assert await refused_status(f"{server.ws_url}/ws", shared_secret="") == 401
        assert await refused_status(f"{server.ws_url}/ws", api_key=API_KEY, shared_secret="x") == 401


# --- answering ------------------------------------------------------------------------------


async def test_answer_streams_in_order_with_one_final(serve, fake_model) -> None:
    said = "Our shop opens at nine in the morning and closes at six in the evening, Monday to Saturday."
    fake_model.queue(Reply.text(said, inter_token_delay=0.01))
    async with (
        serve(**model_settings(fake_model, company_name="Kestrel Broadband")) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        await client.init("conv_1")
        client.history = [{"role": "user", "content": "hi"}, {"role": "agent", "content": "Hello, how can I help?"}]
        answer = await client.ask("when do you open?")
    assert len(answer.chunks) >= 3 and answer.chunks[0] == "Our"
    assert answer.text == said
    assert answer.finals == 1 and answer.event_id == 1
    sent = fake_model.requests[0].messages
    assert sent[0]["role"] == "system" and "Kestrel Broadband" in sent[0]["content"]
    assert "markdown" in sent[0]["content"]
    assert sent[1:3] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
    ]
    assert sent[3]["role"] == "user" and sent[3]["content"].startswith("<reference>")
    assert sent[4] == {"role": "user", "content": "when do you open?"}


async def test_new_transcript_interrupts_and_closes_the_model_stream(serve, fake_model) -> None:
    fake_model.queue(
        Reply.text("one two three four five six seven eight nine ten", inter_token_delay=0.2),
        Reply.text("Second answer."),
    )
    async with (
        serve(**model_settings(fake_model)) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        first = await client.say("tell me a long story")
        await client.wait_for(lambda: client.answers[first].chunks)
        second = await client.ask("actually, never mind")
        async with asyncio.timeout(5):
            await fake_model.requests[0].hung_up.wait()
        await client.ping()
        await client.wait_for(lambda: client.pongs == 1)
    assert client.answers[first].finals == 0
    assert second.finals == 1 and second.text == "Second answer."
    assert not fake_model.requests[0].finished


async def test_ping_gets_pong_and_bad_frames_do_not_end_the_session(serve, fake_model) -> None:
    async with (
        serve(**model_settings(fake_model)) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        await client.ping()
        await client.ws.send("{not json")
        await client.ws.send(b"\xff\xfe binary")
        await client.ws.send("[1, 2, 3]")
        await client.send_json({"type": "something_new", "x": 1})
        await client.send_json({"type": "user_transcript", "user_transcript": [{"bad": 1}], "event_id": 99})
        await client.ping()
        await client.wait_for(lambda: client.pongs == 2)
        answer = await client.ask("still there?")
        metrics = (await _get(server, "/metrics")).text
    assert answer.finals == 1 and answer.text == "You asked: still there?. Thank you for calling."
    assert counted(metrics, "switchboard_dropped_frames_total", leg="brain") == 4  # a new type is no bad frame


# What the documents alone answer to "how much is the paper bill fee?"
FROM_DOCUMENTS = "If you prefer a printed bill mailed to your home, a paper bill fee of $2.50 a month applies."


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(Reply(status=500), FROM_DOCUMENTS, id="http-500"),
        pytest.param(Reply(status=429), FROM_DOCUMENTS, id="rate-limited"),
        pytest.param(Reply.text("too late", first_token_delay=1.5), FROM_DOCUMENTS, id="slow-first-token"),
        pytest.param(
            Reply.text("We open at nine and", disconnect_after=3), "We open at" + APOLOGY_MID_ANSWER, id="cut"
        ),
        pytest.param(Reply(tokens=[]), FROM_DOCUMENTS, id="empty"),
    ],
)
async def test_model_failures_still_answer(serve, fake_model, reply, expected) -> None:
    """Before the first token: the documents answer instead. Mid-answer: a short apology. Never silence."""
    fake_model.queue(reply)
    async with (
        serve(**model_settings(fake_model, llm_first_token_timeout=0.5)) as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        answer = await client.ask("how much is the paper bill fee?")
        follow_up = await client.ask("hello?")
    assert answer.text.startswith(expected) and answer.finals == 1
    if expected == FROM_DOCUMENTS:
        assert "$2.50" in answer.text
    assert follow_up.finals == 1 and follow_up.text.startswith("You asked")


async def test_model_unreachable_answers_from_the_documents(serve, refused) -> None:
    async with (
        serve(openai_base_url=f"http://{refused}/v1", openai_model="m") as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        answer = await client.ask("how much is the paper bill fee?")
        unknown = await client.ask("do you sponsor little league baseball teams?")
    assert answer.text.startswith(FROM_DOCUMENTS) and "$2.50" in answer.text and answer.finals == 1
    assert unknown.text == NO_ANSWER


async def test_close_message_ends_the_session(serve, fake_model) -> None:
    async with serve(**model_settings(fake_model)) as server:
        client = await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET)
        await client.close_conversation()
        async with asyncio.timeout(5):
            await client.ws.wait_closed()
        await client.aclose()


async def _get(server, path: str):
    import httpx

    async with httpx.AsyncClient() as http:
        return await http.get(f"{server.http_url}{path}")
