"""Twilio's leg of a call: the media stream socket, `start`, the caller's audio, marks and keys.

The upgrade's X-Twilio-Signature is checked before accepting (`upgrade_is_signed`). Then the leg
reads Twilio's frames: audio that arrives before the ElevenLabs leg is ready is held (bounded) and
released in order, marks tell `CallControl` what the caller has heard, keys go to the observers,
and `stop` ends the call. What goes back to Twilio (agent audio, clear, marks) is sent through
`send`, whose time in flight the relay's watchdog bounds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn

from werkzeug.datastructures import Headers

from app.calls.control import CallControl, CallEnded, EndReason
from app.observability import Metrics
from app.telephony import elevenlabs_frames as el
from app.telephony import twilio_frames
from app.telephony.signatures import raw_path, stream_signed_urls, valid_signature
from app.telephony.state import Telephony
from app.telephony.twilio_frames import Dtmf, Mark, Media, Start, Stop

if TYPE_CHECKING:
    from app.telephony.elevenlabs_leg import ElevenLabsLeg

log = logging.getLogger("switchboard.bridge")


class TwilioGone(Exception):
    """Twilio's socket closed."""


class TwilioSocket:
    """Twilio's side of one media stream, straight on ASGI: receive, send and close, as the relay needs."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        self.closed = False

    async def connected(self) -> bool:
        """The upgrade request arrived (ASGI's first message); False if the client left first."""
        return (await self._receive())["type"] == "websocket.connect"

    async def refuse(self) -> None:
        """403 instead of the upgrade (ASGI's WebSocket denial response, which Hypercorn supports)."""
        await self._send({"type": "websocket.http.response.start", "status": 403, "headers": [
            (b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
        await self._send({"type": "websocket.http.response.body", "body": b"forbidden\n"})

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else message.get("bytes") or b""
        self.closed = True  # websocket.disconnect
        raise TwilioGone

    async def send(self, data: str) -> None:
        # After Twilio has gone, Hypercorn drops what is sent; the receiving leg ends the call.
        await self._send({"type": "websocket.send", "text": data})

    async def close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code})


def upgrade_is_signed(telephony: Telephony, socket: TwilioSocket) -> bool:
    """Twilio signs the stream URL, in a form it does not document: every form it may use is accepted."""
    settings = telephony.settings
    if settings.public_url is None:
        return False
    scope = socket.scope
    path = raw_path(scope, scope["path"])
    urls = stream_signed_urls(settings, path)
    if scope.get("query_string"):
        urls += stream_signed_urls(settings, path, scope["query_string"])
    return valid_signature(settings, urls, {}, socket.headers)


class TwilioLeg:
    """One call's media stream, as the relay uses it."""

    def __init__(self, telephony: Telephony, socket: TwilioSocket) -> None:
        self.telephony = telephony
        self.socket = socket
        self.limits = telephony.limits
        self.out: twilio_frames.Outgoing | None = None
        self.held: deque[str] = deque(maxlen=self.limits.buffer_frames)
        self.ready = False  # the ElevenLabs leg takes the caller's audio
        self.loop = asyncio.get_running_loop()
        self.send_since: float | None = None  # when the send in progress began (None: none is)
        # Counted in plain ints on the hot path, added to Prometheus once at the end.
        self.frames_in = 0
        self.held_dropped = 0
        self.dropped = 0

    async def wait_for_start(self) -> Start | None:
        """Read until `start`, holding early audio. None (and nothing upstream) if it never comes."""
        try:
            async with asyncio.timeout(self.limits.start_timeout):
                while True:
                    event = twilio_frames.parse(await self.socket.receive())
                    if type(event) is Media:
                        self._hold(event.payload)
                    elif type(event) is Start:
                        self.out = twilio_frames.Outgoing(event.stream_sid)
                        return event
                    elif type(event) is Stop:
                        return None
                    elif event is None:
                        self.dropped += 1
        except TimeoutError:
            self.telephony.metrics.twilio_rejected.labels("no_start").inc()
            log.warning("media stream closed: no start within %.0f s", self.limits.start_timeout)
            return None
        except TwilioGone:
            return None

    def _hold(self, payload: str) -> None:
        if len(self.held) == self.held.maxlen:
            self.held_dropped += 1
        self.held.append(payload)

    async def release_held(self, upstream: ElevenLabsLeg) -> None:
        """Send the audio that arrived before ElevenLabs was ready, then relay live. No await sits
        between the last check and `ready`, so no frame can slip past the held ones."""
        while self.held:
            self.frames_in += 1
            await upstream.send(el.user_audio(self.held.popleft()))
        self.ready = True

    async def run(self, call: CallControl, upstream: ElevenLabsLeg) -> NoReturn:
        """Twilio's frames until `stop` or the socket closes (the hot path: 50 frames a second)."""
        receive = self.socket.receive
        parse = twilio_frames.parse
        user_audio = el.user_audio
        send_upstream = upstream.send
        while True:
            try:
                raw = await receive()
            except TwilioGone:
                raise CallEnded(EndReason.TWILIO_DROPPED) from None
            event = parse(raw)
            kind = type(event)
            if kind is Media:
                if self.ready:
                    self.frames_in += 1
                    await send_upstream(user_audio(event.payload))  # type: ignore[union-attr]
                else:
                    self._hold(event.payload)  # type: ignore[union-attr]
            elif kind is Mark:
                call.mark_echoed(event.name)  # type: ignore[union-attr]
            elif kind is Dtmf:
                self._dtmf(call, event.digit)  # type: ignore[union-attr]
            elif kind is Stop:
                raise CallEnded(call.stop_reason)
            elif event is None:
                self.dropped += 1
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("twilio frame dropped", extra={"call_sid": call.call_sid})

    def _dtmf(self, call: CallControl, digit: str) -> None:
        log.info("caller pressed %s", digit if digit in "*#" else "a key", extra={"call_sid": call.call_sid})
        for observer in list(self.telephony.observers):
            try:
                observer.dtmf(call, digit)
            except Exception:
                log.exception("call observer failed in dtmf")

    # --- to Twilio ----------------------------------------------------------------------------

    async def send(self, data: str) -> None:
        """Bounded by the relay's watchdog, not a timer per frame: this is the hot path."""
        self.send_since = self.loop.time()
        try:
            await self.socket.send(data)
        finally:
            self.send_since = None

    async def send_mark(self, name: str) -> bool:
        """A mark for `CallControl.flush`, from a tool's task: never raises into that task."""
        if self.out is None:
            return False
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self.socket.send(self.out.mark(name))
        except Exception:
            return False
        return True

    async def mark_audio(self, name: str) -> None:
        """The watchdog's mark after a burst of agent audio, timed here (it cannot watch its own send)."""
        assert self.out is not None
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self.socket.send(self.out.mark(name))
        except TimeoutError:
            raise CallEnded(EndReason.TWILIO_STALLED) from None

    async def close(self, code: int) -> None:
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                await self.socket.close(code)
        except Exception:
            pass  # already closed, or Twilio is not reading: the handler's return ends it

    def count(self, metrics: Metrics) -> None:
        metrics.relayed_frames.labels("caller_to_agent").inc(self.frames_in)
        if self.dropped:
            metrics.dropped_frames.labels("twilio", "malformed").inc(self.dropped)
        if self.held_dropped:
            metrics.dropped_frames.labels("twilio", "buffer_full").inc(self.held_dropped)
