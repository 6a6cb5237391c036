"""Call history end to end: calls through the real routes and the fakes are recorded, shown by
`python -m app calls` / `gaps` and on the review page, which is guarded and escapes everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.records.database import create_engine
from app.records.events import CallEnded, CallReceived, CallRefused, TransferResult, TurnDone
from app.records.schema import calls, gaps, messages, passages, turns
from app.settings import Settings
from app.testing.fake_openai import Reply
from app.testing.live_server import LiveServer
from app.testing.speech_engine import SpeechEngineClient
from app.testing.twilio_caller import TwilioCaller, ulaw_frames
from app.testing.twilio_dial import Colleague
from tests.support.calls import sid
from tests.support.config import API_KEY, PUBLIC_URL, SECRET, TARGETS, TWILIO_TOKEN
from tests.support.phone import messages_of, phone_call, tool_results
from tests.support.servers import missing, postgres_server

PASSWORD = "correct horse battery staple"
AUTH = ("admin", PASSWORD)
CARD = "4111 1111 1111 1111"


def command(settings: dict[str, Any], *args: str) -> Any:
    """`python -m app ARGS` in its own process, reading the store the server wrote, as an operator would."""
    env = {**os.environ, "DATA_DIR": str(settings["data_dir"])}
    if settings.get("database_url"):
        env["DATABASE_URL"] = settings["database_url"]
    done = subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, cwd=settings["data_dir"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def flushed(server: LiveServer) -> None:
    svc = server.app.extensions["switchboard"]
    await svc.records.recorder.flushed()


@pytest.fixture
def history(call_settings: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A phone server with its own records store and the review page on."""
    return {**call_settings, "database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}", "admin_password": PASSWORD}


async def test_a_whole_call_is_in_the_calls_command_and_on_the_review_page(
    serve, history, fake_elevenlabs, fake_model, twilio_api
) -> None:
    line = "Of course, I'll put you through to our sales team now."
    fake_model.queue(
        Reply.text("Autopay takes five dollars off every monthly bill."),
        Reply.text(line, tool_calls=[("transfer_call", '{"department": "sales"}')]),
        Reply(tokens=[]),
    )
    twilio_api.colleagues[TARGETS["sales"]] = Colleague("takes")  # someone in sales answers
    async with phone_call(serve, history, fake_elevenlabs, twilio_api) as phone:
        first = await phone.client.ask("how much is the autopay discount?")
        assert first.text == "Autopay takes five dollars off every monthly bill."
        await phone.client.ask("can I talk to someone in sales?")
        await phone.speak(0.3, event_id=2)
        await twilio_api.call_updates.wait(1)
        await phone.ended()  # Twilio stopped the stream when the call was redirected
        await twilio_api.wait_for(lambda: len(twilio_api.dials) == 1)  # and told the server sales took it
        await flushed(phone.server)
        sid = phone.caller.call_sid
        async with httpx.AsyncClient(base_url=phone.server.http_url, auth=AUTH) as browser:
            listing = await browser.get("/admin/calls")
            page = await browser.get(f"/admin/calls/{sid}")
            transferred = await browser.get("/admin/calls", params={"outcome": "transferred"})
            answered = await browser.get("/admin/calls", params={"outcome": "answered"})
    calls = command(history, "calls", "--json")["calls"]
    (mine,) = [c for c in calls if c["call_sid"] == sid]
    assert mine["outcome"] == "transferred" and mine["ended"] == "transferred to sales" and mine["turns"] == 2
    assert mine["end_reason"] == "transferred" and mine["transferred_to"] == "sales"
    assert mine["caller"] == "+•••••••4567" and mine["duration_s"] > 0
    shown = command(history, "calls", "show", sid, "--json")
    one, two = shown["turn_list"]
    assert one["caller"] == "how much is the autopay discount?" and one["agent"] == first.text
    assert any(s["source"].startswith("billing/") for s in one["sources"]), one["sources"]
    assert one["timings_ms"]["first_chunk"] > 0 and one["timings_ms"]["llm_first_token"] > 0
    assert one["timings_ms"]["retrieval"] > 0 and one["timings_ms"]["total"] >= one["timings_ms"]["first_chunk"]
    assert two["agent"] == line and {"tool": "transfer_call", "decision": "accepted"} in two["tools"]
    assert shown["ended"] == "transferred to sales"
    assert listing.status_code == page.status_code == 200
    assert sid in listing.text and "transferred" in listing.text and "•••••••4567" in listing.text
    assert "how much is the autopay discount?" in page.text and "transferred to sales" in page.text
    assert "billing/" in page.text and "<details>" in page.text and 'class="latency"' in page.text
    assert sid in transferred.text and sid not in answered.text


async def test_with_record_calls_false_a_call_leaves_its_message_and_no_other_record(
    serve, history, fake_elevenlabs, fake_model, twilio_api
) -> None:
    message = {"name": "Dana", "callback_number": "(415) 555-0100", "message": "Call me back."}
    fake_model.queue(
        Reply.text("Autopay takes five dollars off every monthly bill."),
        Reply(tokens=[], tool_calls=[("take_message", json.dumps(message))]),
        Reply.text("I've passed that on."),
    )
    async with phone_call(serve, {**history, "record_calls": False}, fake_elevenlabs, twilio_api) as phone:
        await phone.svc.records.ready.wait()
        await phone.client.ask("do you offer pet insurance?")
        saved = await phone.client.ask("can I leave a message for billing?")
        await phone.hung_up()
    assert saved.text == "I've passed that on."
    (kept,) = await messages_of(history, phone.caller.call_sid)
    assert (kept.name, kept.callback_number, kept.message) == ("Dana", "+14155550100", "Call me back.")
    engine = create_engine(Settings(_env_file=None, database_url=history["database_url"]))
    try:
        async with engine.connect() as conn:
            rows = {table.name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                    for table in (calls, turns, passages, gaps, messages)}  # fmt: skip
    finally:
        await engine.dispose()
    assert rows == {"calls": 0, "turns": 0, "passages": 0, "gaps": 0, "messages": 1}


async def test_paraphrases_asked_in_two_calls_form_one_gap_and_card_numbers_are_never_stored(
    serve, phone_settings, fake_elevenlabs, twilio_api, kb_index, tmp_path
) -> None:
    # No model: the documents alone answer, and say so when they cannot.
    records = tmp_path / "records.sqlite3"
    settings = {**phone_settings, "index_dir": kb_index, "database_url": f"sqlite:///{records}"}
    sids = []
    questions = [
        ["do you offer pet insurance?", "how much is the autopay discount?", f"my card number is {CARD}"],
        ["hello?", "can I buy insurance for my dog from you?", "thank you so much", "thanks, bye"],
    ]
    async with serve(**settings) as server:
        for asked in questions:
            async with TwilioCaller(server.http_url, PUBLIC_URL, TWILIO_TOKEN) as caller:
                await caller.call(0.2)
                conv = await fake_elevenlabs.conversation(len(sids))
                async with await SpeechEngineClient.open(
                    f"{server.ws_url}/ws", api_key=API_KEY, shared_secret=SECRET,
                    headers={"x-call-sid": caller.call_sid},
                ) as client:  # fmt: skip
                    await client.init(conv.conversation_id)
                    for question in asked:
                        await client.ask(question)
                await caller.hang_up()
            sids.append(caller.call_sid)
        await flushed(server)
    gaps = {gap["example"]: gap for gap in command(settings, "gaps", "--json")["gaps"]}
    gap = gaps["do you offer pet insurance?"]
    assert gap["count"] == 2 and sorted(gap["calls"]) == sorted(sids)
    # The documents don't answer a card number either: that gap is kept redacted.
    assert set(gaps) == {"do you offer pet insurance?", "my card number is [card number]"}
    first = command(settings, "calls", "show", sids[0], "--json")
    assert [t["unanswered"] for t in first["turn_list"]] == [True, False, True]
    assert "[card number]" in first["turn_list"][2]["caller"]
    # Small talk the documents do not answer is no knowledge gap.
    second = command(settings, "calls", "show", sids[1], "--json")
    assert [t["unanswered"] for t in second["turn_list"]] == [False, True, False, False]
    raw = b"".join(p.read_bytes() for p in records.parent.glob(records.name + "*"))
    assert b"4111" not in raw


# --- the review page's guard ------------------------------------------------------------------------


@asynccontextmanager
async def review(serve: Any, make_settings: Any, tmp_path: Path, **overrides: Any) -> AsyncIterator[LiveServer]:
    values = {"database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}", "admin_password": PASSWORD, **overrides}
    async with serve(**values) as server:
        svc = server.app.extensions["switchboard"]
        async with asyncio.timeout(30):
            await svc.records.ready.wait()
        yield server


def hostile_turn(call_sid: str) -> TurnDone:
    from app.knowledge.retrieval import Passage

    return TurnDone(
        call_sid=call_sid,
        conversation_id="conv_hostile",
        event_id=1,
        started_at=datetime.now(UTC),
        caller_text='<script>alert("caller")</script> and <img src=x onerror=alert(1)>',
        agent_text="I read <b>bold</b> & <i>more</i>",
        interrupted=False,
        outcome="answered",
        abstained=True,
        fallback=None,
        tools=[],
        timings_ms={"first_chunk": 120.0, "total": 400.0},
        sources=(Passage("c1-x", "evil/<svg onload=alert(2)>.md", ("<h1>",), "<script>alert(3)</script>", 0.5, 0.5),),
        unanswered='<img src=x onerror=alert("gap")>',
    )


async def seeded(server: LiveServer, call_sid: str) -> None:
    svc = server.app.extensions["switchboard"]
    svc.records.record(CallReceived(call_sid, "+14155550100", datetime.now(UTC)))
    svc.records.record(hostile_turn(call_sid))
    svc.records.record(CallEnded(call_sid, "caller_hung_up", "caller_hung_up", datetime.now(UTC), 12.0))
    await flushed(server)


async def test_the_review_page_needs_the_password_and_is_off_without_one(serve, make_settings, tmp_path) -> None:
    async with review(serve, make_settings, tmp_path) as server, httpx.AsyncClient(base_url=server.http_url) as web:
        anonymous = await web.get("/admin")
        wrong = await web.get("/admin/calls", auth=("admin", "guess"))
        other_user = await web.get("/admin/calls", auth=("root", PASSWORD))
        right = await web.get("/admin/calls", auth=AUTH)
        post = await web.post("/admin/gaps/1/handled")
    assert anonymous.status_code == wrong.status_code == other_user.status_code == post.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert right.status_code == 200
    async with review(serve, make_settings, tmp_path, admin_password=None) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as web:
            off = await web.get("/admin", auth=AUTH)
    assert off.status_code == 403 and "ADMIN_PASSWORD" in off.text


async def test_changes_need_the_pages_csrf_token_and_everything_is_escaped(serve, make_settings, tmp_path) -> None:
    sid = "CA" + "e" * 32
    async with review(serve, make_settings, tmp_path) as server:
        await seeded(server, sid)
        async with httpx.AsyncClient(base_url=server.http_url, auth=AUTH) as web:
            call_page = await web.get(f"/admin/calls/{sid}")
            gaps_page = await web.get("/admin/gaps")
            action, token = re.search(
                r'action="([^"]+)"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"', gaps_page.text
            ).groups()
            forged = await web.post(action, data={"csrf_token": "1." + "0" * 64})
            missing = await web.post(action)
            cross_site = await web.post(action, data={"csrf_token": token}, headers={"Origin": "https://evil.example"})
            still_open = await web.get("/admin/gaps")
            done = await web.post(action, data={"csrf_token": token}, headers={"Origin": server.http_url})
            after = await web.get("/admin/gaps")
    csp = call_page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    for page in (call_page.text, gaps_page.text):
        assert "<script>" not in page and "<img src=x" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(&#34;caller&#34;)&lt;/script&gt;" in call_page.text
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in call_page.text  # the passage, expandable
    assert "&lt;img src=x onerror=alert(&#34;gap&#34;)&gt;" in gaps_page.text
    assert forged.status_code == missing.status_code == cross_site.status_code == 403
    assert 'id="gap-' in still_open.text
    assert done.status_code == 303 and 'id="gap-' not in after.text


def timed_turn(call_sid: str, at: datetime, first_chunk_ms: float, unanswered: str | None = None) -> TurnDone:
    return TurnDone(
        call_sid=call_sid, conversation_id=None, event_id=1, started_at=at, caller_text="a question",
        agent_text="an answer", interrupted=False, outcome="answered", abstained=unanswered is not None,
        fallback=None, tools=[], timings_ms={"first_chunk": first_chunk_ms, "total": first_chunk_ms + 500},
        unanswered=unanswered,
    )  # fmt: skip


async def test_the_overview_counts_known_calls(serve, make_settings, tmp_path) -> None:
    """Six calls in the last 14 days (two answered, one each transferred, with a message, with an
    unanswered question, turned away busy) and one older, whose turns took 100 to 500 ms and 10 s."""
    now = datetime.now(UTC)
    today, yesterday, earlier, old = now, now - timedelta(days=1), now - timedelta(days=3), now - timedelta(days=20)
    calls = {  # call SID: (started, first words in ms, how it went)
        sid(1): (today, 100.0, "answered"),
        sid(2): (today, 200.0, "transferred"),
        sid(3): (today, 300.0, "message"),
        sid(4): (yesterday, 400.0, "unanswered"),
        sid(5): (yesterday, 500.0, "answered"),
        sid(6): (earlier, None, "busy"),
        sid(7): (old, 10_000.0, "answered"),
    }
    async with review(serve, make_settings, tmp_path) as server:
        svc = server.app.extensions["switchboard"]
        svc.records.outbox.call_ended_grace = timedelta(hours=1)  # no call is analysed yet (test_analysis)
        for call_sid, (at, first_chunk_ms, outcome) in calls.items():
            svc.records.record(CallReceived(call_sid, "+14155550100", at))
            if outcome == "busy":
                svc.records.record(CallRefused(call_sid, "busy", at))
                continue
            unanswered = "do you offer pet insurance?" if outcome == "unanswered" else None
            svc.records.record(timed_turn(call_sid, at, first_chunk_ms, unanswered))
            if outcome == "transferred":
                svc.records.record(TransferResult(call_sid, "sales", "connected", at))
            svc.records.record(CallEnded(call_sid, "caller_hung_up", "caller_hung_up", at, 30.0))
        await flushed(server)
        await svc.records.messages.add(name="Ada", callback_number="+14155550100", message="Call me.",
                                       call_sid=sid(3), caller=None, conversation_id=None)  # fmt: skip
        async with httpx.AsyncClient(base_url=server.http_url, auth=AUTH) as web:
            page = (await web.get("/admin")).text
    figures = dict(
        (label.strip(), figure) for figure, label in re.findall(r'<span class="figure">([^<]*)</span>\s*([^<(]+)', page)
    )
    assert figures == {
        "calls": "6",
        "answered": "33%",
        "transferred": "17%",
        "left a message": "17%",
        "with an unanswered question": "17%",
        "resolved": "–",
        "time to first words, p50 / p95": "300 / 480 ms",  # of 100, 200, 300, 400 and 500 ms
    }
    assert "(5 recent turns)" in page
    per_day = dict(re.findall(r"<title>(\d\d \w{3}): (\d+) calls</title>", page))
    assert len(per_day) == 14 and sum(map(int, per_day.values())) == 6
    for day, count in ((today, "3"), (yesterday, "2"), (earlier, "1")):
        assert per_day[day.strftime("%d %b")] == count


# --- in a real browser ----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_in_a_browser_the_review_page_shows_calls_and_gaps_and_runs_no_hostile_script(
    serve, make_settings, tmp_path
) -> None:
    if not await asyncio.to_thread(Path(CHROMIUM).exists):
        missing("Chromium")
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    sid = "CA" + "b" * 32
    async with review(serve, make_settings, tmp_path) as server, async_playwright() as pw:
        await seeded(server, sid)
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # Without a login the server answers 401 (headless Chromium, which cannot ask, gives up on it).
            anonymous = await (await browser.new_context()).new_page()
            statuses: list[int] = []
            anonymous.on("response", lambda response: statuses.append(response.status))
            with contextlib.suppress(PlaywrightError):
                await anonymous.goto(f"{server.http_url}/admin/calls")
            assert statuses == [401]
            context = await browser.new_context(http_credentials={"username": "admin", "password": PASSWORD})
            page = await context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            await page.goto(f"{server.http_url}/admin")
            await page.get_by_role("link", name="Calls", exact=True).click()
            await page.get_by_role("link", name=re.compile(r"\d{4}-\d\d-\d\d")).first.click()
            assert await page.locator("h1").inner_text() == "Call from +•••••••0100"
            caller = page.locator(".turn .caller").first
            assert '<script>alert("caller")</script>' in await caller.inner_text()
            assert await page.locator(".turn script, .turn img").count() == 0
            await page.locator("summary").first.click()
            assert "<script>alert(3)</script>" in await page.locator("blockquote").first.inner_text()
            await page.get_by_role("link", name="Knowledge gaps").click()
            example = page.locator("td.example").first
            assert await example.inner_text() == '<img src=x onerror=alert("gap")>'
            await page.get_by_role("button", name="Mark handled").click()
            await page.wait_for_url(re.compile(r"/admin/gaps$"))
            assert await page.locator("td.example").count() == 0
            assert "No open knowledge gaps" in await page.locator("main").inner_text()
            assert dialogs == []
        finally:
            await browser.close()


# --- the store going away mid-call ------------------------------------------------------------------


async def test_postgresql_going_away_mid_call_loses_no_audio_and_no_message(
    serve, call_settings, fake_elevenlabs, fake_model, twilio_api
) -> None:
    message = {"name": "Dana", "callback_number": "(415) 555-0100", "message": "Call me back."}
    fake_model.queue(
        Reply.text("Autopay takes five dollars off."),
        Reply(tokens=[], tool_calls=[("take_message", json.dumps(message))]),
        Reply.text("I'm sorry, I couldn't save that. Shall I put you through to someone instead?"),
    )
    with postgres_server() as pg:
        settings = {**call_settings, "database_url": pg.create_database("calls")}
        async with phone_call(serve, settings, fake_elevenlabs, twilio_api) as phone:
            async with asyncio.timeout(30):
                await phone.svc.records.ready.wait()  # the schema is in place before the store goes away
            await phone.client.ask("how much is the autopay discount?")
            await asyncio.to_thread(pg.stop)
            # Audio goes on both ways.
            before = len(phone.conv.user_audio)
            sent = await phone.caller.send_audio(ulaw_frames(0.4))
            await phone.conv.wait_for(lambda: len(phone.conv.user_audio) >= before + len(sent))
            spoken = await phone.speak(0.2, event_id=2)
            await phone.caller.wait_for(lambda: len(phone.caller.media) >= len(spoken))
            answer = await phone.client.ask("can I leave a message for billing?")
            (result,) = tool_results(fake_model.requests[-1])
            assert result["ok"] is False and "could not be saved" in result["error"]
            assert answer.text.startswith("I'm sorry, I couldn't save that.")
            svc = phone.svc
            assert svc.records.recorder.pending >= 1  # the turn made while it is away waits in the buffer
            await asyncio.to_thread(pg.start)
            await svc.records.recorder.flushed(timeout=60)
            await phone.hung_up()
            sid = phone.caller.call_sid
        shown = command(settings, "calls", "show", sid, "--json")
    assert [t["caller"] for t in shown["turn_list"]] == [
        "how much is the autopay discount?",
        "can I leave a message for billing?",
    ]
    assert shown["ended"] == "caller hung up" and shown["caller"] == "+•••••••4567"
    assert {"tool": "take_message", "decision": "failed"} in shown["turn_list"][1]["tools"]


async def test_the_model_reporting_an_unanswered_question_makes_a_gap_without_another_round(
    serve, make_settings, fake_model, tmp_path
) -> None:
    from app.brain.tools.report_unanswered_question import NAME as GAP_TOOL

    fake_model.queue(
        Reply.text(
            "I'm sorry, I don't have information about pet insurance.",
            tool_calls=[(GAP_TOOL, '{"question": "does Kestrel offer pet insurance?"}')],
        ),
        Reply.text("Autopay takes five dollars off."),
    )
    model = {"openai_base_url": fake_model.base_url, "openai_model": "fake-model"}
    async with review(serve, make_settings, tmp_path, **model) as server:
        async with await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client:
            await client.init("conv_gap")
            sorry = await client.ask("erm, do you lot do insurance for pets?")
            await client.ask("how much is the autopay discount?")
        await flushed(server)
        async with server.app.extensions["switchboard"].records.engine.connect() as conn:
            from app.records.queries import list_gaps

            (gap,) = await list_gaps(conn)
    assert sorry.text == "I'm sorry, I don't have information about pet insurance."
    assert len(fake_model.requests) == 2  # one per turn: noting the gap needed no second round
    assert gap.example == "does Kestrel offer pet insurance?" and gap.count == 1
    first_tools = [spec["function"]["name"] for spec in fake_model.requests[0].body["tools"]]
    assert GAP_TOOL in first_tools


async def test_messages_are_listed_newest_first_and_can_be_marked_handled(serve, make_settings, tmp_path) -> None:
    async with review(serve, make_settings, tmp_path) as server:
        store = server.app.extensions["switchboard"].records.messages
        for name in ("Ada", "Bo<b>b</b>"):
            await store.add(
                name=name, callback_number="+14155550100", message=f"call {name} back", call_sid=None, caller=None,
                conversation_id=None,
            )  # fmt: skip
        async with httpx.AsyncClient(base_url=server.http_url, auth=AUTH) as web:
            page = await web.get("/admin/messages")
            action, token = re.search(
                r'action="([^"]+/handled)"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"', page.text
            ).groups()
            done = await web.post(action, data={"csrf_token": token})
            after = await web.get("/admin/messages")
        handled = await store.since(handled=True)
    assert page.text.index("Bo&lt;b&gt;b&lt;/b&gt;") < page.text.index("Ada")  # newest first, escaped
    assert done.status_code == 303 and [m.name for m in handled] == ["Bo<b>b</b>"]
    assert after.text.count("Mark handled") == 1
