"""`make call`: a whole phone call on your laptop, through every part of Switchboard.

With nothing configured, it starts the stand-ins for Twilio and ElevenLabs (this package) and a
Switchboard server wired to them, each on a free local port, with your own settings (`.env`:
DATA_DIR and INDEX_DIR, so the index `make run` built is reused and messages land where
`python -m app messages` reads them; the model, if OPENAI_* is set; the departments; GREETING).
The Speech Engine stand-in is configured by the same code as `make configure`. Then one call goes
through the real webhook (signed), media stream, bridge and brain: you type what the caller says
and see what the agent says as it streams, with the turn's timings; a transfer shows where the
call would go, a hang-up ends the session, and `0` presses the keypad's 0.

What the stand-ins cannot do is real speech: the caller's words travel as real μ-law frames and,
beside them, as text for the engine's "recognition"; the agent's text becomes a tone as long as
the words would take to say (see `fake_engine`).

    make call                                           type the caller's side
    make call ARGS='--say "how much is autopay?" --say "thanks, bye"'   scripted, prints the call
    make call ARGS='--say "hi" --json'                  the same as one JSON document
    make call ARGS='--server https://your.host'         one tone-only call into a running server

Server logs go to DATA_DIR/call.log. Everything started here stops when the call ends or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvloop

from app import create_app
from app.__main__ import build_index_if_missing
from app.brain.tools import end_call, transfer_call
from app.calls.registry import LiveCall
from app.configure import configure_engine
from app.observability import configure_logging
from app.private_files import owner_only, private_file
from app.settings import Settings, ensure_env_file, load_settings
from app.testing.fake_engine import EngineEvent, SpeechEngineStandIn
from app.testing.fake_twilio_api import FakeTwilioApi
from app.testing.live_server import LiveServer, bound_socket
from app.testing.twilio_caller import TwilioCaller, Webhook, new_sid, ulaw_frames

CALLER_CHARS_PER_S = 15  # how long the caller's audio for a line lasts
TURN_TIMEOUT_S = 60.0
GREETING_TIMEOUT_S = 15.0
ACTION_TIMEOUT_S = 20.0  # a transfer or hang-up happens once the agent's line has been heard
KEYS = set("0123456789*#")
CALLER = "+12025550100"  # the simulated caller's number: a fictional 555-01xx one


@dataclass
class Turn:
    caller: str
    agent: str = ""
    first_chunk_ms: float | None = None  # the caller's words recognised → the agent's first words
    first_audio_ms: float | None = None  # the caller's audio sent → the agent's first audio heard
    total_ms: float | None = None  # the caller's words recognised → the agent's whole answer
    tools: list[str] = field(default_factory=list)
    retries: int = 0  # the engine gave up waiting for the brain's first words and sent the turn again
    event_id: int | None = None  # the engine's id of the turn as answered (the call's records name it)


@dataclass
class CallRecord:
    answers_from: str
    greeting: str | None = None
    greeting_ms: float | None = None  # `make call` started → the greeting's first audio heard
    turns: list[Turn] = field(default_factory=list)
    transfer: dict[str, str] | None = None
    ended_by: str | None = None  # "agent", "caller" or "transfer"


class LocalSwitchboard:
    """The stand-ins and a server wired to them, on free local ports; `async with` runs them."""

    def __init__(self, settings: Settings) -> None:
        self.user_settings = settings
        self.api_key = "sk_local_" + secrets.token_urlsafe(16)
        self.account_sid = new_sid("AC")
        self.auth_token = secrets.token_urlsafe(24)
        self.engine = SpeechEngineStandIn(self.api_key)
        self.twilio = FakeTwilioApi(self.account_sid, self.auth_token)
        self._stack = contextlib.AsyncExitStack()
        self.settings = settings
        self.server: LiveServer | None = None
        # Twilio's REST updates of each call (a transfer's redirect), to the phone on that call.
        self.redirects: dict[str, Callable[[dict[str, str]], None]] = {}

    async def __aenter__(self) -> LocalSwitchboard:
        try:
            await self._stack.enter_async_context(self.engine)
            await self._stack.enter_async_context(self.twilio)
            self.twilio.on_call_update = self._call_updated
            sock = bound_socket()
            public = f"http://127.0.0.1:{sock.getsockname()[1]}"
            # Validated like any settings, and nothing read again from .env or the environment.
            self.settings = Settings(_env_file=None, **{**self.user_settings.model_dump(), **self._wiring(public)})
            said: list[str] = []
            if not await asyncio.to_thread(configure_engine, self.settings, False, said.append):
                raise RuntimeError("configuring the Speech Engine stand-in failed:\n" + "\n".join(said))
            self.server = await self._stack.enter_async_context(LiveServer(create_app(self.settings), sock))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _wiring(self, public: str) -> dict[str, Any]:
        """The user's settings, with every peer replaced by a local stand-in (nothing leaves the machine)."""
        return {
            "public_url": public,
            "twilio_account_sid": self.account_sid,
            "twilio_auth_token": self.auth_token,
            "twilio_webhook_key": None,
            "twilio_phone_number": None,
            "twilio_api_base_url": self.twilio.base_url,
            "elevenlabs_api_key": self.api_key,
            "elevenlabs_base_url": self.engine.base_url,
            "speech_engine_id": self.engine.engine_id,
            "shared_secret": self.user_settings.secret("shared_secret") or secrets.token_urlsafe(32),
        }

    @property
    def services(self) -> Any:
        """The running server's services (the app is in this process)."""
        assert self.server is not None
        return self.server.app.extensions["switchboard"]

    def _call_updated(self, call_sid: str, form: dict[str, str]) -> None:
        listener = self.redirects.get(call_sid)
        if listener is not None:
            listener(form)

    def tool_counts(self) -> Counter[str]:
        """Tool calls so far, as the server counts them (its metrics, all calls together)."""
        counts: Counter[str] = Counter()
        for family in self.services.metrics.tool_calls.collect():
            for sample in family.samples:
                if sample.name == "switchboard_tool_calls_total":
                    tool, outcome = sample.labels["tool"], sample.labels["outcome"]
                    counts[tool if outcome in ("accepted", "keypad") else f"{tool} ({outcome})"] += int(sample.value)
        return counts


class Phone:
    """One call into the local switchboard, seen from the caller's side."""

    def __init__(self, board: LocalSwitchboard, record: CallRecord, realtime: bool, caller: str = CALLER) -> None:
        assert board.server is not None
        self.board = board
        self.record = record
        self.caller = TwilioCaller(
            board.server.http_url,
            board.settings.public_url or "",
            board.auth_token,
            caller=caller,
            account_sid=board.account_sid,
            realtime=realtime,
            on_media=self._audio_arrived,
            api=board.twilio,
        )
        self.happenings: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.after_stream: Webhook | None = None  # the TwiML Twilio got once the server ended the stream
        self._first_audio_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._live: LiveCall | None = None  # the call as the server's registry holds it

    @property
    def ended(self) -> bool:
        return self.record.ended_by is not None

    def _audio_arrived(self, payload: str) -> None:
        if self._first_audio_at is None:
            self._first_audio_at = time.perf_counter()

    async def __aenter__(self) -> Phone:
        call_sid = self.caller.call_sid
        self.board.redirects[call_sid] = lambda form: self.happenings.put_nowait(("redirect", form))
        self._tasks = [
            asyncio.create_task(self._forward(self.board.engine.events(call_sid)), name="phone-engine-events"),
            asyncio.create_task(self._watch_stream(), name="phone-stream-watch"),
        ]
        try:
            hook = await self.caller.dial()
            if hook.stream_url is None:
                raise RuntimeError(f"the webhook did not connect the call (HTTP {hook.status}): {hook.body[:300]}")
            await self.caller.open_stream()
            await self.caller.connected()
            await self.caller.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.ended and self.caller.ws is not None and not self.caller.closed.is_set():
            with contextlib.suppress(Exception):
                await self.caller.stop()
            self.record.ended_by = "caller"
        await self.caller.aclose()
        self.board.redirects.pop(self.caller.call_sid, None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _forward(self, events: asyncio.Queue[EngineEvent]) -> None:
        while True:
            event = await events.get()
            self.happenings.put_nowait((event.kind, event))

    async def _watch_stream(self) -> None:
        await self.caller.closed.wait()
        self.happenings.put_nowait(("closed", None))

    async def greeting(self, started: float) -> None:
        """Wait for the conversation to start, and for the greeting's audio if there is one."""
        async with asyncio.timeout(GREETING_TIMEOUT_S):
            while True:
                kind, value = await self.happenings.get()
                if kind == "started":
                    self.record.greeting = value.text or None
                    # The conversation is open, so the server's registry holds the call.
                    sid = self.caller.call_sid
                    self._live = await self.board.services.registry.find(call_sid=sid, timeout=GREETING_TIMEOUT_S)
                    break
                if await self._call_over(kind, value):
                    return
            if self.record.greeting is None:
                return
            while self._first_audio_at is None:
                await self.caller.wait_for(lambda: bool(self.caller.media), timeout=GREETING_TIMEOUT_S)
        self.record.greeting_ms = _ms(self._first_audio_at - started)

    async def say(self, text: str, show: Callable[[str], None], heard: str | None = None) -> Turn:
        """The caller says `text` (recognised as `heard`, if speech recognition got it otherwise) and
        the agent answers; a transfer or hang-up the agent asked for is waited for."""
        turn = Turn(text)
        self.record.turns.append(turn)
        before, acting = self.board.tool_counts(), self._acting()
        frames = caller_audio(text)
        self.board.engine.will_say(self.caller.call_sid, text if heard is None else heard, len(frames))
        self._first_audio_at = None
        sent = time.perf_counter()
        await self.caller.send_audio(frames)
        heard_at = sent
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while True:
                kind, value = await self.happenings.get()
                if kind == "heard":
                    heard_at = value.at
                elif kind == "retried":
                    turn.retries += 1
                elif kind == "said":
                    if turn.first_chunk_ms is None:
                        turn.first_chunk_ms = _ms(value.at - heard_at)
                    turn.agent += value.text
                    show(value.text)
                elif kind == "done":
                    turn.total_ms = _ms(value.at - heard_at)
                    turn.event_id = value.event_id
                    break
                elif await self._call_over(kind, value):
                    break
        if self._first_audio_at is not None:
            turn.first_audio_ms = _ms(self._first_audio_at - sent)
        turn.tools = sorted((self.board.tool_counts() - before).elements())
        if self._acting() > acting:
            await self._until_over()
        return turn

    def _acting(self) -> int:
        """Transfers and hang-ups the server has agreed to on this call so far."""
        live = self._live
        return 0 if live is None else live.used(transfer_call.NAME) + live.used(end_call.NAME)

    async def press(self, key: str) -> list[str]:
        before = self.board.tool_counts()
        await self.caller.dtmf(key)
        if key == "0" and self.board.server.app.extensions["switchboard"].directory.departments:
            await self._until_over()  # the keypad's 0 transfers at once
        return sorted((self.board.tool_counts() - before).elements())

    async def hang_up(self) -> None:
        if not self.ended:
            await self.caller.hang_up()
            self.record.ended_by = "caller"

    async def _until_over(self) -> None:
        """A transfer or hang-up is under way: wait for Twilio's side of it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACTION_TIMEOUT_S):
                while not await self._call_over(*await self.happenings.get()):
                    pass

    async def _call_over(self, kind: str, value: Any) -> bool:
        """Play Twilio's part when the call leaves the stream; True if it did."""
        if kind == "redirect":  # a transfer: Twilio stops the stream (the stand-in does) and runs the new TwiML
            self.record.transfer = _dial(value.get("Twiml", ""))
            self.record.ended_by = "transfer"
            return True
        if kind == "closed" and not self.ended:  # the server closed the stream: Twilio asks what next
            self.record.ended_by = "agent"
            self.after_stream = await self.caller.connect_action()
            return True
        return False


def caller_audio(text: str) -> list[bytes]:
    """The caller's audio for a line: a tone as long as the words take to say."""
    return ulaw_frames(max(0.4, len(text) / CALLER_CHARS_PER_S), frequency=300)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _dial(twiml: str) -> dict[str, str]:
    """Where a transfer's TwiML sends the call: the number, the department, what is said first."""
    hook = Webhook.parse(200, twiml)
    action = hook.dial.get("action", "")
    department = parse_qs(urlsplit(action).query).get("department", [""])[0]
    return {"department": department, "number": hook.dialled[0] if hook.dialled else "", "said": " ".join(hook.said)}


# --- the terminal --------------------------------------------------------------------------------


def _timings(turn: Turn) -> str:
    parts = []
    if turn.first_chunk_ms is not None:
        parts.append(f"first words {turn.first_chunk_ms:.0f} ms")
    if turn.first_audio_ms is not None:
        parts.append(f"first audio {turn.first_audio_ms:.0f} ms")
    if turn.total_ms is not None:
        parts.append(f"answer {turn.total_ms:.0f} ms")
    parts += [f"tool: {tool}" for tool in turn.tools]
    if turn.retries:
        parts.append(f"the engine gave up waiting and sent it again {turn.retries}x")
    return f"   [{' · '.join(parts)}]" if parts else ""


def _ending(record: CallRecord) -> str:
    if record.transfer is not None:
        t = record.transfer
        said = f' ("{t["said"]}")' if t["said"] else ""
        return f"── transferred to {t['department'] or 'a colleague'}{said}: the call would now ring {t['number']}"
    if record.ended_by == "agent":
        return "── the agent hung up"
    return "── you hung up"


class Terminal:
    """What the person at the keyboard sees (nothing on stdout but the JSON with --json)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def line(self, text: str = "") -> None:
        if not self.as_json:
            print(text, flush=True)

    def chunk(self, text: str) -> None:
        if not self.as_json:
            print(text, end="", flush=True)


async def _lines() -> AsyncIterator[str]:
    """Lines typed at the terminal, without a thread (one would outlive Ctrl-C). The event loop
    makes stdin non-blocking, which the shell shares: its flags are put back afterwards."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    flags = fcntl.fcntl(sys.stdin.fileno(), fcntl.F_GETFL)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            yield line.decode(errors="replace").strip()
    finally:
        transport.close()
        fcntl.fcntl(sys.stdin.fileno(), fcntl.F_SETFL, flags)


async def _converse(phone: Phone, say: list[str], out: Terminal) -> None:
    async def turn(text: str) -> None:
        if text in KEYS:
            tools = await phone.press(text)
            out.line(f"   [pressed {text}{''.join(f' · tool: {t}' for t in tools)}]")
            return
        out.chunk("agent> ")
        done = await phone.say(text, out.chunk)
        out.line(_timings(done))

    if say:
        for text in say:
            if phone.ended:
                break
            out.line(f"you>   {text}")
            await turn(text)
        return
    out.line("Type what the caller says and press Enter; a single 0-9, * or # presses that key;")
    out.line("an empty line or Ctrl-D hangs up.")
    out.chunk("you>   ")
    async for text in _lines():
        if not text or phone.ended:
            break
        await turn(text)
        if phone.ended:
            break
        out.chunk("you>   ")


async def run_local(say: list[str], as_json: bool) -> int:
    started = time.perf_counter()
    out = Terminal(as_json)
    wrote_env = ensure_env_file()
    settings = load_settings()
    log_path = private_file(settings.data_dir / "call.log")
    with log_path.open("a", encoding="utf-8") as log_file:
        configure_logging(settings.log_level, settings.log_format, log_file)
        if wrote_env:
            out.line("wrote .env from .env.example with a fresh SHARED_SECRET")
        await asyncio.to_thread(build_index_if_missing, settings)
        answers_from = f"the model {settings.openai_model}" if settings.llm_enabled else "the documents alone"
        record = CallRecord(answers_from=answers_from)
        async with LocalSwitchboard(settings) as board:
            assert board.server is not None
            out.line(
                f"Switchboard on {board.server.http_url}; stand-ins for Twilio on {board.twilio.base_url}, "
                f"ElevenLabs on {board.engine.base_url} and {board.engine.elevenlabs.ws_url}"
            )
            out.line(f"Answers from {answers_from}; server log: {log_path}")
            if not board.server.app.extensions["switchboard"].directory.departments:
                out.line("(no departments: the agent cannot transfer; see DEPARTMENTS_FILE in README.md)")
            async with Phone(board, record, realtime=not say) as phone:
                await phone.greeting(started)
                if record.greeting:
                    out.line(f"agent> {record.greeting}   [greeting, heard {record.greeting_ms:.0f} ms after start]")
                await _converse(phone, say, out)
                if say and not phone.ended:
                    await phone.hang_up()
            out.line(_ending(record))
    if as_json:
        print(json.dumps(asdict(record), indent=2))
    return 0


async def call_server(server: str, seconds: float) -> int:
    """One call into a running, configured server: signed like Twilio, real μ-law audio (a tone)."""
    settings = load_settings()
    token = settings.secret("twilio_auth_token")
    if not token or not settings.public_url:
        print("--server needs TWILIO_AUTH_TOKEN and PUBLIC_URL (the server checks signatures against them)")
        return 2
    caller = TwilioCaller(server, settings.public_url, token, realtime=True)
    async with caller:
        hook = await caller.dial()
        print(f"webhook: HTTP {hook.status}, TwiML verbs {hook.verbs}")
        if hook.stream_url is None:
            print(hook.body)
            return 1
        await caller.open_stream()
        await caller.connected()
        await caller.start()
        for frame in ulaw_frames(seconds):
            await caller.send_audio([frame])
            await asyncio.sleep(0.02)  # real time: one 20 ms frame every 20 ms
        heard = sum(len(base64.b64decode(p)) for p in caller.media)
        print(f"agent audio heard: {heard} bytes ({heard / 8000:.1f} s), marks echoed: {len(caller.echoed)}")
        await caller.hang_up()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make call", description=__doc__.split("\n\n")[0])
    parser.add_argument("--say", action="append", default=[], help="what the caller says (repeat for more turns)")
    parser.add_argument("--json", action="store_true", help="print the call as one JSON document")
    parser.add_argument("--server", help="call a running, configured server at this URL instead")
    parser.add_argument("--seconds", type=float, default=5.0, help="with --server: how long the caller's tone lasts")
    args = parser.parse_args(argv)
    owner_only()
    if args.server:
        sys.exit(asyncio.run(call_server(args.server, args.seconds)))
    try:
        sys.exit(uvloop.run(run_local(args.say, args.json)))
    except KeyboardInterrupt:
        print("\n── hung up (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
