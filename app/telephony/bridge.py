"""GET /media-stream: Twilio Media Streams ⇄ an ElevenLabs conversation, one relay per call.

The upgrade's X-Twilio-Signature is checked before accepting, and the per-call token in `start`
before anything upstream is opened. Then base64 μ-law passes through untouched both ways (both
sides speak ulaw_8000), interruptions clear Twilio's queue, pings are answered, and a mark follows
each burst of agent audio so `CallControl` knows what the caller has heard.

One TaskGroup per call (Twilio leg, ElevenLabs leg, marks, supervisor): whichever ends first raises
`CallEnded`, which cancels the others; `finally` closes both sockets and records why the stream
ended, which is what the Connect action reads to decide between hanging up and apologising.

The route is served on bare ASGI in front of Quart (`MediaStreamRoute`): each call passes 50 frames a
second each way, and Quart's per-message queue hop and signals cost about 0.1 % of a core per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from quart import Quart
from werkzeug.datastructures import Headers

from app.calls.control import CallControl, EndReason
from app.observability import mask_digits
from app.telephony import call_token, twilio_frames
from app.telephony import elevenlabs_frames as el
from app.telephony.signatures import public_url, raw_path, stream_url, valid_signature
from app.telephony.state import Telephony, bounded
from app.telephony.twilio_frames import Dtmf, Mark, Media, Start, Stop

log = logging.getLogger("switchboard.bridge")

STREAM_PATH = "/media-stream"
# Close codes towards Twilio: normal end, and "policy" for a stream we refuse after accepting.
NORMAL_CLOSURE = 1000
POLICY_VIOLATION = 1008
# Agent audio is marked once it pauses this long, or this often while it goes on.
MARK_QUIET_S = 0.1
MARK_EVERY_S = 1.0


class CallEnded(Exception):
    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason)
        self.reason = reason


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


def upgrade_is_signed(telephony: Telephony, twilio: TwilioSocket) -> bool:
    """Twilio signs the stream URL as written in the TwiML (wss://host/path, no params); the https
    form of the same URL is accepted too (protocols.md A3)."""
    settings = telephony.settings
    if settings.public_url is None:
        return False
    scope = twilio.scope
    path = raw_path(scope, scope["path"])
    urls = [stream_url(settings, path), public_url(settings, path)]
    if scope.get("query_string"):
        urls += [f"{url}?{scope['query_string'].decode('latin-1')}" for url in urls]
    return valid_signature(settings, urls, {}, twilio.headers)


class MediaStreamRoute:
    """ASGI in front of the Quart app: GET /media-stream is served here, everything else by Quart."""

    def __init__(self, app: Quart, telephony: Telephony) -> None:
        self.quart = app.asgi_app
        self.telephony = telephony

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or scope["path"] != STREAM_PATH:
            return await self.quart(scope, receive, send)
        await media_stream(self.telephony, TwilioSocket(scope, receive, send))


async def media_stream(telephony: Telephony, twilio: TwilioSocket) -> None:
    if not await twilio.connected():
        return
    if not upgrade_is_signed(telephony, twilio):
        telephony.metrics.twilio_rejected.labels("stream_signature").inc()
        log.warning("media stream refused: bad or missing X-Twilio-Signature")
        await twilio.refuse()
        return
    await twilio.accept()
    await Relay(telephony, twilio).run()


class Relay:
    """One call's media stream and its ElevenLabs conversation."""

    def __init__(self, telephony: Telephony, twilio: TwilioSocket) -> None:
        self.telephony = telephony
        self.limits = telephony.limits
        self.metrics = telephony.metrics
        self.twilio = twilio
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self.call: CallControl | None = None
        self.out: twilio_frames.Outgoing | None = None
        self.held: deque[str] = deque(maxlen=self.limits.buffer_frames)
        self.ready = False
        self.interrupted_id = -1
        self.metadata: el.Metadata | None = None
        # Counted in plain ints on the hot path, added to Prometheus once at the end.
        self.frames_in = 0
        self.frames_out = 0
        self.held_dropped = 0
        self.stale_dropped = 0
        self.dropped = {"twilio": 0, "elevenlabs": 0}
        self.response_id: int | None = None
        self.response_bytes = 0
        self.last_audio_at = 0.0
        self.loop = asyncio.get_running_loop()
        # When the send in progress to each peer began (None: no send in progress).
        self.upstream_send_since: float | None = None
        self.twilio_send_since: float | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        start = await self._wait_for_start()
        if start is None or not await self._admit(start):
            await self._close_twilio(POLICY_VIOLATION)
            return
        call = self.call
        assert call is not None
        self.telephony.metrics.calls_active.inc()
        started = time.monotonic()
        # Kept if the relay is cancelled: the server is stopping and gave up waiting for this call.
        reason = EndReason.TWILIO_DROPPED
        try:
            reason = await self._relay(call)
        finally:
            await self._finish(call, reason, time.monotonic() - started)

    async def _relay(self, call: CallControl) -> EndReason:
        reason = EndReason.INTERNAL_ERROR
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._twilio_leg(), name=f"bridge-twilio-{call.call_sid}")
                tasks.create_task(self._upstream_leg(), name=f"bridge-elevenlabs-{call.call_sid}")
                tasks.create_task(self._supervise(call), name=f"bridge-supervisor-{call.call_sid}")
                tasks.create_task(self._watch_and_mark(call), name=f"bridge-watchdog-{call.call_sid}")
        except* CallEnded as ended:
            reason = ended.exceptions[0].reason  # type: ignore[attr-defined]
        except* Exception:
            log.exception("bridge failed", extra={"call_sid": call.call_sid})
            reason = EndReason.INTERNAL_ERROR
        return reason

    async def _finish(self, call: CallControl, reason: EndReason, seconds: float) -> None:
        telephony = self.telephony
        telephony.calls.pop(call.call_sid, None)
        # Before Twilio's socket closes: the Connect action it posts next reads this.
        await self._shared(telephony.outcomes.record(call.call_sid, reason), "outcome")
        self._count(reason, seconds)
        await self._close_upstream()
        await self._close_twilio(NORMAL_CLOSURE)  # nothing to do if Twilio has already gone
        call.finish(reason)
        self._log_response_end()
        log.log(
            logging.WARNING if reason.failed else logging.INFO,
            "call ended: %s after %.1f s",
            reason.value,
            seconds,
            extra={
                "call_sid": call.call_sid,
                "conversation_id": call.conversation_id,
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "dropped": sum(self.dropped.values()),
            },
        )
        for observer in list(telephony.observers):
            await self._notify(observer.call_ended(call), "call_ended")
        await self._shared(telephony.slots.release(call.call_sid), "release")

    def _count(self, reason: EndReason, seconds: float) -> None:
        metrics = self.metrics
        metrics.calls_active.dec()
        metrics.calls.labels(reason.value).inc()
        metrics.call_seconds.observe(seconds)
        metrics.relayed_frames.labels("caller_to_agent").inc(self.frames_in)
        metrics.relayed_frames.labels("agent_to_caller").inc(self.frames_out)
        for leg, count in self.dropped.items():
            if count:
                metrics.dropped_frames.labels(leg, "malformed").inc(count)
        if self.held_dropped:
            metrics.dropped_frames.labels("twilio", "buffer_full").inc(self.held_dropped)
        if self.stale_dropped:
            metrics.dropped_frames.labels("elevenlabs", "interrupted").inc(self.stale_dropped)

    async def _shared(self, work: Any, what: str) -> None:
        """Shared call state at a call's start or end: bounded, and its failure never the call's."""
        await bounded(work, self.limits.observer_timeout, None, f"call state not updated ({what})", log)

    async def _notify(self, callback: Any, what: str) -> None:
        try:
            async with asyncio.timeout(self.limits.observer_timeout):
                await callback
        except Exception:
            log.exception("call observer failed in %s", what)

    # --- before the call: start, token, admission ---------------------------------------------

    async def _wait_for_start(self) -> Start | None:
        """Read until `start`, holding early audio. None (and nothing upstream) if it never comes."""
        try:
            async with asyncio.timeout(self.limits.start_timeout):
                while True:
                    event = twilio_frames.parse(await self.twilio.receive())
                    if type(event) is Media:
                        self._hold(event.payload)
                    elif type(event) is Start:
                        return event
                    elif type(event) is Stop:
                        return None
                    elif event is None:
                        self.dropped["twilio"] += 1
        except TimeoutError:
            self.metrics.twilio_rejected.labels("no_start").inc()
            log.warning("media stream closed: no start within %.0f s", self.limits.start_timeout)
            return None
        except TwilioGone:
            return None

    async def _admit(self, start: Start) -> bool:
        settings = self.telephony.settings
        params = start.custom_parameters
        caller = params.get("caller", "")
        key = call_token.derive_key(settings.secret("twilio_auth_token") or "")
        extra = {"call_sid": start.call_sid[:40]}
        if not call_token.verify(key, params.get("token"), start.call_sid, caller, time.time()):
            self.metrics.twilio_rejected.labels("call_token").inc()
            log.warning("media stream refused: bad or expired call token", extra=extra)
            return False
        if not await self._claim(start.call_sid):
            self.metrics.twilio_rejected.labels("stream_busy").inc()
            log.warning("media stream refused: call already streaming, or no free slot", extra=extra)
            return False
        self.out = twilio_frames.Outgoing(start.stream_sid)
        self.call = CallControl(start.call_sid, start.stream_sid, caller, self._send_mark)
        self.telephony.calls[start.call_sid] = self.call
        return True

    async def _claim(self, call_sid: str) -> bool:
        """The stream takes the slot its webhook reserved. If the shared store cannot say, the call
        goes on: its webhook admitted it and its token is valid."""
        claimed = self.telephony.slots.claim(call_sid)
        return await bounded(
            claimed, self.limits.observer_timeout, True, "admission not checked, the call goes on", log
        )

    def _hold(self, payload: str) -> None:
        if len(self.held) == self.held.maxlen:
            self.held_dropped += 1
        self.held.append(payload)

    # --- the three tasks ----------------------------------------------------------------------

    async def _twilio_leg(self) -> None:
        receive = self.twilio.receive
        parse = twilio_frames.parse
        user_audio = el.user_audio
        call = self.call
        assert call is not None
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
                    await self._send_upstream(user_audio(event.payload))  # type: ignore[union-attr]
                else:
                    self._hold(event.payload)  # type: ignore[union-attr]
            elif kind is Mark:
                call.mark_echoed(event.name)  # type: ignore[union-attr]
            elif kind is Dtmf:
                self._dtmf(call, event.digit)  # type: ignore[union-attr]
            elif kind is Stop:
                raise CallEnded(EndReason.CALLER_HUNG_UP)
            elif event is None:
                self.dropped["twilio"] += 1
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("twilio frame dropped", extra={"call_sid": call.call_sid})

    async def _upstream_leg(self) -> None:
        call = self.call
        assert call is not None
        await self._open_upstream(call)
        upstream = self.upstream
        assert upstream is not None
        for observer in list(self.telephony.observers):
            await self._notify(observer.call_started(call), "call_started")
        await self._release_held()
        parse = el.parse
        send_twilio = self._send_twilio
        out = self.out
        assert out is not None
        loop = self.loop
        receive = self._receive_upstream
        while (raw := await receive()) is not None:
            event = parse(raw)
            kind = type(event)
            if kind is el.Audio:
                if event.event_id <= self.interrupted_id:  # type: ignore[union-attr]
                    self.stale_dropped += 1
                    continue
                self._count_response(event)  # type: ignore[arg-type]
                self.frames_out += 1
                self.last_audio_at = loop.time()
                await send_twilio(out.media(event.payload))  # type: ignore[union-attr]
                call.audio_sent()
            elif kind is el.Ping:
                await self._send_upstream(el.pong(event.event_id))  # type: ignore[union-attr]
            elif kind is el.Interruption:
                self.interrupted_id = max(self.interrupted_id, event.event_id)  # type: ignore[union-attr]
                await send_twilio(out.clear())
                call.cleared()
                log.debug("interruption", extra={"call_sid": call.call_sid, "event_id": self.interrupted_id})
            elif kind is el.Error:
                log.warning(
                    "ElevenLabs error: %s %s",
                    event.error_type,  # type: ignore[union-attr]
                    event.message,  # type: ignore[union-attr]
                    extra={"call_sid": call.call_sid, "code": event.code},  # type: ignore[union-attr]
                )
                raise CallEnded(EndReason.UPSTREAM_DROPPED)
            elif event is None:
                self.dropped["elevenlabs"] += 1
        raise CallEnded(self._upstream_close_reason())

    async def _watch_and_mark(self, call: CallControl) -> None:
        """Every MARK_QUIET_S: end a call whose send to either peer has hung past the send timeout,
        and mark agent audio after each burst (MARK_QUIET_S without a chunk), or every MARK_EVERY_S
        during a long one. Not one mark per chunk, which would double Twilio traffic."""
        loop = self.loop
        out = self.out
        assert out is not None
        limit = self.limits.send_timeout
        marked_at = loop.time()
        while True:
            await asyncio.sleep(MARK_QUIET_S)
            now = loop.time()
            upstream_since, twilio_since = self.upstream_send_since, self.twilio_send_since
            if upstream_since is not None and now - upstream_since > limit:
                raise CallEnded(EndReason.UPSTREAM_STALLED)
            if twilio_since is not None and now - twilio_since > limit:
                raise CallEnded(EndReason.TWILIO_STALLED)
            if not call.unmarked_audio:
                continue
            if now - self.last_audio_at >= MARK_QUIET_S or now - marked_at >= MARK_EVERY_S:
                marked_at = now
                try:
                    async with asyncio.timeout(limit):  # this watchdog cannot watch its own send
                        await self.twilio.send(out.mark(call.audio_mark(self.response_id or 0)))
                except TimeoutError:
                    raise CallEnded(EndReason.TWILIO_STALLED) from None

    async def _supervise(self, call: CallControl) -> None:
        try:
            async with asyncio.timeout(self.limits.max_call_seconds):
                reason = await call.end_requested()
        except TimeoutError:
            reason = EndReason.MAX_DURATION
        raise CallEnded(reason)

    # --- ElevenLabs -----------------------------------------------------------------------------

    async def _open_upstream(self, call: CallControl) -> None:
        """Signed URL, socket, initiation data, and metadata saying ulaw_8000 both ways."""
        settings = self.telephony.settings
        client = self.telephony.elevenlabs
        assert client is not None and settings.speech_engine_id
        try:
            async with asyncio.timeout(self.limits.ready_timeout):
                try:
                    signed = await client.conversational_ai.conversations.get_signed_url(
                        agent_id=settings.speech_engine_id, request_options={"max_retries": 1}
                    )
                    assert self.telephony.upstream_client is not None
                    self.upstream = await self.telephony.upstream_client.ws_connect(
                        signed.signed_url,
                        compress=0,
                        max_msg_size=el.MAX_FRAME_CHARS,
                        timeout=aiohttp.ClientWSTimeout(ws_close=self.limits.close_timeout),
                    )
                except (TimeoutError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    status = getattr(exc, "status_code", None)
                    log.error(
                        "ElevenLabs unreachable: %s%s",
                        type(exc).__name__,
                        f" (HTTP {status})" if status else "",
                        extra={"call_sid": call.call_sid},
                    )
                    raise CallEnded(EndReason.UPSTREAM_UNREACHABLE) from None
                variables = {"call_sid": call.call_sid, "caller": call.caller}
                call.greeting = await self.telephony.greeting()
                await self._send_upstream(el.initiation(variables, call.greeting))
                self.metadata = await self._wait_for_metadata()
        except TimeoutError:
            reached = self.upstream is not None
            log.error(
                "ElevenLabs %s within %.0f s",
                "sent no conversation metadata" if reached else "did not answer",
                self.limits.ready_timeout,
                extra={"call_sid": call.call_sid},
            )
            raise CallEnded(EndReason.UPSTREAM_STALLED if reached else EndReason.UPSTREAM_UNREACHABLE) from None
        meta = self.metadata
        call.conversation_id = meta.conversation_id
        if meta.input_format != el.PHONE_FORMAT or meta.output_format != el.PHONE_FORMAT:
            log.error(
                "Speech Engine %s speaks %s in and %s out, but phone audio needs ulaw_8000 both ways: set "
                "asr.user_input_audio_format and tts.agent_output_audio_format to ulaw_8000 (make configure)",
                settings.speech_engine_id,
                meta.input_format,
                meta.output_format,
                extra={"call_sid": call.call_sid, "conversation_id": meta.conversation_id},
            )
            raise CallEnded(EndReason.FORMAT_MISMATCH)
        log.info(
            "call started from %s",
            mask_digits(call.caller),
            extra={
                "call_sid": call.call_sid,
                "stream_sid": call.stream_sid,
                "conversation_id": meta.conversation_id,
                "input_format": meta.input_format,
                "output_format": meta.output_format,
            },
        )

    async def _wait_for_metadata(self) -> el.Metadata:
        while (raw := await self._receive_upstream()) is not None:
            event = el.parse(raw)
            if type(event) is el.Metadata:
                return event
            if type(event) is el.Ping:
                await self._send_upstream(el.pong(event.event_id))
            elif type(event) is el.Error:
                log.warning("ElevenLabs error before the conversation started: %s", event.message)
                raise CallEnded(EndReason.UPSTREAM_DROPPED)
            else:
                self.dropped["elevenlabs"] += 1
        raise CallEnded(self._upstream_close_reason())

    async def _receive_upstream(self) -> str | bytes | None:
        """The next data frame from ElevenLabs; None once the socket is closed or broken."""
        upstream = self.upstream
        assert upstream is not None
        message = await upstream.receive()
        kind = message.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            return message.data  # binary is not ElevenLabs: parse() drops and counts it
        return None  # close, closing, closed, error (aiohttp has closed the socket)

    async def _release_held(self) -> None:
        """Send the audio that arrived before ElevenLabs was ready, then relay live. No await sits
        between the last check and `ready`, so no frame can slip past the held ones."""
        while self.held:
            self.frames_in += 1
            await self._send_upstream(el.user_audio(self.held.popleft()))
        self.ready = True

    def _upstream_close_reason(self) -> EndReason:
        upstream = self.upstream
        code = upstream.close_code if upstream is not None else None
        if code == NORMAL_CLOSURE:
            return EndReason.AGENT_ENDED
        log.warning("ElevenLabs closed the conversation abnormally (code %s)", code)
        return EndReason.UPSTREAM_DROPPED

    async def _close_upstream(self) -> None:
        if self.upstream is None:
            return
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                await self.upstream.close()
        except Exception:
            pass  # closing a dead socket: nothing left to do

    # --- sends, each bounded --------------------------------------------------------------------

    async def _send_upstream(self, data: str) -> None:
        # Bounded by the watchdog in `_watch_and_mark`, not a timer per frame: this is the hot path.
        upstream = self.upstream
        assert upstream is not None
        self.upstream_send_since = self.loop.time()
        try:
            await upstream.send_str(data)
        except (ConnectionError, aiohttp.ClientError):
            raise CallEnded(self._upstream_close_reason()) from None
        finally:
            self.upstream_send_since = None

    async def _send_twilio(self, data: str) -> None:
        self.twilio_send_since = self.loop.time()
        try:
            await self.twilio.send(data)
        finally:
            self.twilio_send_since = None

    async def _send_mark(self, name: str) -> bool:
        """For `CallControl.flush`, from a tool's task: never raises into that task."""
        if self.out is None:
            return False
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self.twilio.send(self.out.mark(name))
        except Exception:
            return False
        return True

    async def _close_twilio(self, code: int) -> None:
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                await self.twilio.close(code)
        except Exception:
            pass  # already closed, or Twilio is not reading: the handler's return ends it

    # --- small things -------------------------------------------------------------------------

    def _dtmf(self, call: CallControl, digit: str) -> None:
        log.info("caller pressed %s", digit if digit in "*#" else "a key", extra={"call_sid": call.call_sid})
        for observer in list(self.telephony.observers):
            try:
                observer.dtmf(call, digit)
            except Exception:
                log.exception("call observer failed in dtmf")

    def _count_response(self, audio: el.Audio) -> None:
        if audio.event_id != self.response_id:
            self._log_response_end()
            self.response_id = audio.event_id
            self.response_bytes = 0
        payload = audio.payload
        self.response_bytes += len(payload) * 3 // 4 - payload.endswith("=") - payload.endswith("==")

    def _log_response_end(self) -> None:
        if self.response_id is not None and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "agent response relayed",
                extra={
                    "call_sid": self.call.call_sid if self.call else None,
                    "event_id": self.response_id,
                    "bytes": self.response_bytes,
                },
            )
