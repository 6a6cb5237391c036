"""A stand-in for Twilio placing one call into the server (protocols.md A).

It posts the voice webhook signed as Twilio signs it (`RequestValidator.compute_signature` over the
PUBLIC_URL, not the address it actually connects to, like a tunnel), reads the TwiML, follows the
`<Stream url>` through the same "tunnel", signs the upgrade, and speaks the Media Streams protocol:
connected, start (with the TwiML's parameters), real 20 ms μ-law frames, dtmf, mark echoes, stop.

Like Twilio it plays agent audio in order and echoes each mark once the audio before it has played;
`realtime=True` plays at 8000 bytes a second, otherwise instantly. `clear` empties the queue and
echoes the marks that were waiting in it. Given the REST API stand-in (`api`), its stream ends as
Twilio ends it when the call is updated through REST (a redirect or a hang-up): `stop`, then close.
`delay` puts a one-way network delay on the leg to the server, both ways (benchmarks).

`make call` (`app.testing.phone`) uses it to place a whole call.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.testing.latency import Outbox, arrivals

if TYPE_CHECKING:
    from app.testing.fake_twilio_api import FakeTwilioApi

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law


def _ulaw(sample: int) -> int:
    """G.711 μ-law encoding of one 16-bit linear sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_frames(seconds: float, frequency: float = 440.0, amplitude: int = 8000) -> list[bytes]:
    """Real telephone audio: a tone as 20 ms frames of 160 μ-law bytes."""
    count = int(seconds * 8000) // FRAME_BYTES * FRAME_BYTES
    linear = (amplitude * np.sin(2 * np.pi * frequency * np.arange(count) / 8000)).astype(np.int64)
    # A tone repeats a few dozen sample values: each is encoded once.
    values, where = np.unique(linear, return_inverse=True)
    samples = np.array([_ulaw(int(v)) for v in values], dtype=np.uint8)[where].tobytes()
    return [samples[i : i + FRAME_BYTES] for i in range(0, count, FRAME_BYTES)]


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class Webhook:
    """What the server answered to a webhook, with the TwiML taken apart."""

    status: int
    body: str
    verbs: list[str] = field(default_factory=list)
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    action_url: str | None = None
    said: list[str] = field(default_factory=list)
    dialled: list[str] = field(default_factory=list)  # the numbers a <Dial> rings
    redirect_url: str | None = None
    dial: dict[str, str] = field(default_factory=dict)  # the <Dial>'s attributes (action, timeout...)
    number: dict[str, str] = field(default_factory=dict)  # its <Number>'s (url, machineDetection...)
    gather: dict[str, str] = field(default_factory=dict)  # a <Gather>'s (numDigits, action...)

    @classmethod
    def parse(cls, status: int, body: str) -> Webhook:
        hook = cls(status, body)
        if status != 200:
            return hook
        root = ET.fromstring(body)
        hook.verbs = [child.tag for child in root]
        for connect_el in root.iter("Connect"):
            hook.action_url = connect_el.get("action")
        for stream in root.iter("Stream"):
            hook.stream_url = stream.get("url")
            hook.parameters = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
        hook.said = [say.text or "" for say in root.iter("Say")]
        for dial in root.iter("Dial"):
            hook.dial = dict(dial.attrib)
            numbers = list(dial.iter("Number"))
            hook.dialled += [(n.text or "").strip() for n in numbers] or [(dial.text or "").strip()]
            hook.number = dict(numbers[0].attrib) if numbers else {}
        hook.gather = next((dict(g.attrib) for g in root.iter("Gather")), {})
        hook.redirect_url = next(((r.text or "").strip() for r in root.iter("Redirect")), None)
        return hook


class TwilioCaller:
    def __init__(
        self,
        server_url: str,
        public_url: str,
        auth_token: str,
        *,
        caller: str = "+15551234567",
        to: str = "+15557654321",
        call_sid: str | None = None,
        account_sid: str | None = None,
        realtime: bool = False,
        on_media: Callable[[str], None] | None = None,
        record: bool = True,
        api: FakeTwilioApi | None = None,
        delay: float = 0.0,
        route: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.auth_token = auth_token
        self.validator = RequestValidator(auth_token)
        self.caller = caller
        self.to = to
        self.call_sid = call_sid or new_sid("CA")
        self.account_sid = account_sid or new_sid("AC")
        self.stream_sid = new_sid("MZ")
        self.realtime = realtime
        self.on_media = on_media
        self.record = record
        self.api = api
        self.delay = delay
        self.route = route  # headers for a request to this public path (tests pin it to a replica)
        self._outbox: Outbox[str | bytes] | None = None
        self.webhook: Webhook | None = None
        self.ws: ClientConnection | None = None
        # What came back, in order: ("media", payload) / ("mark", name) / ("clear", "") / other JSON.
        self.received: list[tuple[str, Any]] = []
        self.media: list[str] = []
        self.echoed: list[str] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._sequence = itertools.count(1)
        self._chunk = itertools.count(1)
        self._started_at = time.monotonic()
        self._queue: deque[tuple[str, str]] = deque()
        self._queued = asyncio.Event()
        self._updates = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # --- the webhook ------------------------------------------------------------------------

    def _local(self, public: str) -> str:
        """The tunnel: the public URL's path and query on the server's real address."""
        parts = urlsplit(public)
        local = urlsplit(self.server_url)
        scheme = local.scheme
        if parts.scheme in ("ws", "wss"):
            scheme = "ws" if local.scheme == "http" else "wss"
        query = f"?{parts.query}" if parts.query else ""
        return f"{scheme}://{local.netloc}{parts.path}{query}"

    def form(self, **extra: str) -> dict[str, str]:
        return {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.caller,
            "To": self.to,
            "Caller": self.caller,
            "Called": self.to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
            **extra,
        }

    async def post(
        self,
        public: str,
        form: dict[str, str],
        *,
        signature: str | None = None,
        signed_url: str | None = None,
        headers: dict[str, str] | None = None,
        validator: RequestValidator | None = None,
        algorithm: str | None = None,
    ) -> Webhook:
        if signature is None:
            signature = (validator or self.validator).compute_signature(signed_url or public, form, algorithm)
        routed = self.route(urlsplit(public).path) if self.route is not None else {}
        sent = {"X-Twilio-Signature": signature, **routed, **(headers or {})}
        if not signature:
            del sent["X-Twilio-Signature"]
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.sleep(self.delay)  # the request on its way
            response = await client.post(self._local(public), data=form, headers=sent)
            await asyncio.sleep(self.delay)  # the answer on its way back
        return Webhook.parse(response.status_code, response.text)

    async def dial(self, path: str = "/incoming-call", **kw: Any) -> Webhook:
        """Twilio's voice webhook for this call."""
        self.webhook = await self.post(f"{self.public_url}{path}", self.form(), **kw)
        return self.webhook

    async def follow_redirect(self, **kw: Any) -> Webhook:
        """What Twilio does with `<Redirect>`: post the same call's form to the URL it names."""
        assert self.webhook is not None and self.webhook.redirect_url
        self.webhook = await self.post(self.webhook.redirect_url, self.form(), **kw)
        return self.webhook

    def next_leg(self, hook: Webhook) -> TwilioCaller:
        """The same call on a new media stream, as Twilio opens one for new `<Connect><Stream>` TwiML
        (a call back from a transfer): the same identity, a new stream SID, `hook` its TwiML."""
        leg = TwilioCaller(
            self.server_url,
            self.public_url,
            self.auth_token,
            caller=self.caller,
            to=self.to,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            realtime=self.realtime,
            on_media=self.on_media,
            record=self.record,
            api=self.api,
            delay=self.delay,
            route=self.route,
        )
        leg.webhook = hook
        return leg

    async def connect_action(self, **kw: Any) -> Webhook:
        """What Twilio does when <Connect> ends: POST the action URL from the TwiML."""
        assert self.webhook is not None and self.webhook.action_url
        return await self.post(self.webhook.action_url, self.form(CallStatus="in-progress"), **kw)

    # --- the media stream -------------------------------------------------------------------

    async def open_stream(
        self,
        *,
        url: str | None = None,
        signature: str | None = None,
        sign: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Open the TwiML's stream URL with a signed upgrade. Raises InvalidStatus when refused."""
        if url is None:
            assert self.webhook is not None and self.webhook.stream_url
            url = self.webhook.stream_url
        headers = {**(self.route(urlsplit(url).path) if self.route is not None else {}), **(headers or {})}
        if sign:
            headers["X-Twilio-Signature"] = signature or self.validator.compute_signature(url, {})
        await asyncio.sleep(self.delay)
        self.ws = await connect(self._local(url), additional_headers=headers, compression=None, open_timeout=10)
        await asyncio.sleep(self.delay)
        if self.delay:
            self._outbox = Outbox(self.ws.send, self.delay, f"twilio-caller-outbox-{self.call_sid}")
        if self.api is not None:
            self.api.streams[self.call_sid] = self
        self._tasks = [
            asyncio.create_task(self._read(), name=f"twilio-caller-reader-{self.call_sid}"),
            asyncio.create_task(self._play(), name=f"twilio-caller-player-{self.call_sid}"),
        ]

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        if self._outbox is not None:
            self._outbox.put(data)
        else:
            await self.ws.send(data)

    async def connected(self) -> None:
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, parameters: dict[str, str] | None = None, call_sid: str | None = None) -> None:
        if parameters is None:
            assert self.webhook is not None
            parameters = self.webhook.parameters
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": call_sid or self.call_sid,
            "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await self.send_json(self._envelope("start", start=start))

    def _envelope(self, event: str, **body: Any) -> dict[str, Any]:
        return {"event": event, "sequenceNumber": str(next(self._sequence)), "streamSid": self.stream_sid, **body}

    def media_frame(self, payload: str) -> str:
        timestamp = int((time.monotonic() - self._started_at) * 1000)
        return (
            f'{{"event":"media","sequenceNumber":"{next(self._sequence)}","streamSid":"{self.stream_sid}",'
            f'"media":{{"track":"inbound","chunk":"{next(self._chunk)}","timestamp":"{timestamp}",'
            f'"payload":"{payload}"}}}}'
        )

    async def send_audio(self, frames: list[bytes]) -> list[str]:
        """Send μ-law frames as media events; returns their base64 payloads."""
        payloads = [base64.b64encode(frame).decode() for frame in frames]
        for payload in payloads:
            await self.send_raw(self.media_frame(payload))
        return payloads

    async def dtmf(self, digit: str) -> None:
        await self.send_json(self._envelope("dtmf", dtmf={"track": "inbound_track", "digit": digit}))

    async def stop(self) -> None:
        await self.send_json(self._envelope("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid}))

    async def call(self, seconds: float = 1.0) -> None:
        """The common opening: webhook, stream, connected, start, and some caller audio."""
        await self.dial()
        await self.open_stream()
        await self.connected()
        await self.start()
        await self.send_audio(ulaw_frames(seconds))

    # --- what comes back --------------------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in arrivals(self.ws, self.delay) if self.delay else self.ws:
                message = json.loads(raw)
                event = message.get("event")
                if event == "media":
                    payload = message["media"]["payload"]
                    if self.on_media is not None:
                        self.on_media(payload)
                    if not self.record:
                        self._queue.append(("media", payload))
                        self._queued.set()
                        continue
                    self.media.append(payload)
                    self.received.append(("media", payload))
                    self._queue.append(("media", payload))
                elif event == "mark":
                    self.received.append(("mark", message["mark"]["name"]))
                    self._queue.append(("mark", message["mark"]["name"]))
                elif event == "clear":
                    self.received.append(("clear", ""))
                    marks = [name for kind, name in self._queue if kind == "mark"]
                    self._queue.clear()
                    for name in marks:
                        await self._echo(name)
                else:
                    self.received.append((str(event), message))
                self._queued.set()
                async with self._updates:
                    self._updates.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._updates:
                self._updates.notify_all()

    async def _play(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                kind, value = self._queue.popleft()
                if kind == "mark":
                    await self._echo(value)
                elif self.realtime:
                    await asyncio.sleep(len(value) * 3 / 4 / 8000)

    async def _echo(self, name: str) -> None:
        try:
            await self.send_json(self._envelope("mark", mark={"name": name}))
        except ConnectionClosed:
            return
        self.echoed.append(name)
        async with self._updates:
            self._updates.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._updates:
            await self._updates.wait_for(predicate)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code

    @property
    def streaming(self) -> bool:
        """The media stream is open (Twilio has not ended it, nor has the server closed it)."""
        return self.ws is not None and not self.closed.is_set() and not self._stopped

    async def hang_up(self) -> None:
        """Twilio's end of a stream (the caller hung up, or a REST update moved the call on): stop,
        then the socket closes. Nothing to do for a stream that has already ended."""
        if self.streaming:
            self._stopped = True
            await self.stop()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket (without a stop, if none was sent: an abrupt drop) and the tasks."""
        if self._outbox is not None:
            await self._outbox.aclose()
        if self.ws is not None:
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aenter__(self) -> TwilioCaller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
