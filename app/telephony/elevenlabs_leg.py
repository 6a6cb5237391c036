"""The ElevenLabs leg of a call: its conversation socket, opened as early as possible, then relayed.

Opening a conversation takes several round trips to ElevenLabs: a signed URL (REST), the WebSocket,
the initiation data (the call's dynamic variables and the greeting, with the caller's name if the
caller lookup has answered by then) and the metadata, which must say ulaw_8000 both ways. So it
starts when Twilio's webhook arrives (`EarlyStarts`), while Twilio is still opening the media
stream: the caller hears the greeting that much sooner. Until the stream
starts, nothing more is read from the socket, so the greeting's audio waits there and then goes
out in order. A conversation no stream has claimed `BridgeLimits.early_unclaimed` after it opened
(the caller hung up, or the stream reached another replica, which opens its own) is closed. Its webhook's
admission slot covers it, as it covers the call.

Relaying: agent audio goes to Twilio untouched, except audio of a response the caller interrupted;
pings are answered; an interruption clears Twilio's queue; an `error` event is logged and counted,
and the call goes on: only a closed socket ends it (as in the SDK's own `Conversation`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, NoReturn

import aiohttp
from aiohttp import WSMsgType

from app.calls.control import CallControl, CallEnded, EndReason
from app.observability import Metrics
from app.speech_engine_contract import dynamic_variables
from app.telephony import elevenlabs_frames as el

if TYPE_CHECKING:
    from app.telephony.state import Telephony
    from app.telephony.twilio_leg import TwilioLeg

log = logging.getLogger("switchboard.bridge")

NORMAL_CLOSURE = 1000


class ElevenLabsLeg:
    """One call's conversation socket."""

    def __init__(self, telephony: Telephony, call_sid: str, caller: str, first: str | None = None) -> None:
        self.telephony = telephony
        self.first = first  # what the agent says first instead of GREETING (a call back from a transfer)
        self.limits = telephony.limits
        self.metrics = telephony.metrics
        self.call_sid = call_sid
        self.caller = caller
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.metadata: el.Metadata | None = None
        self.greeting: str | None = None  # what the engine was asked to say first, if anything
        self.opening: asyncio.Task[None] | None = None  # an early start under way (or done)
        self.loop = asyncio.get_running_loop()
        self.send_since: float | None = None  # when the send in progress began (None: none is)
        self.interrupted_id = -1
        self.response_id: int | None = None  # the event id of the agent audio being relayed
        self.response_bytes = 0
        self.last_audio_at = 0.0
        # Counted in plain ints on the hot path, added to Prometheus once at the end.
        self.frames_out = 0
        self.stale_dropped = 0
        self.dropped = 0

    # --- opening ------------------------------------------------------------------------------

    def open_early(self) -> None:
        self.opening = self.loop.create_task(self.open(), name=f"elevenlabs-open-{self.call_sid}")

    async def opened(self) -> None:
        """The conversation is open: the early start's, once it is (its failure is the call's), or
        one opened now."""
        if self.opening is None:
            await self.open()
        else:
            await self.opening

    async def open(self) -> None:
        """Signed URL, socket, initiation data, and metadata saying ulaw_8000 both ways."""
        extra = {"call_sid": self.call_sid}
        caller = self.telephony.lookups.so_far(self.call_sid)  # raced against the greeting, never awaited
        try:
            async with asyncio.timeout(self.limits.ready_timeout):
                await self._connect()
                self.greeting = await self.telephony.greeting(self.first, caller)
                await self.send(el.initiation(dynamic_variables(self.call_sid, self.caller), self.greeting))
                self.metadata = await self._wait_for_metadata()
        except TimeoutError:
            reached = self.socket is not None
            log.error(
                "ElevenLabs %s within %.0f s",
                "sent no conversation metadata" if reached else "did not answer",
                self.limits.ready_timeout,
                extra=extra,
            )
            raise CallEnded(EndReason.UPSTREAM_STALLED if reached else EndReason.UPSTREAM_UNREACHABLE) from None
        finally:
            await caller.close()
        meta = self.metadata
        if meta.input_format != el.PHONE_FORMAT or meta.output_format != el.PHONE_FORMAT:
            log.error(
                "Speech Engine %s speaks %s in and %s out, but phone audio needs ulaw_8000 both ways: set "
                "asr.user_input_audio_format and tts.agent_output_audio_format to ulaw_8000 (make configure)",
                self.telephony.settings.speech_engine_id,
                meta.input_format,
                meta.output_format,
                extra={**extra, "conversation_id": meta.conversation_id},
            )
            raise CallEnded(EndReason.FORMAT_MISMATCH)

    async def _connect(self) -> None:
        settings = self.telephony.settings
        client = self.telephony.elevenlabs
        session = self.telephony.upstream_client
        assert client is not None and session is not None and settings.speech_engine_id
        try:
            signed = await client.conversational_ai.conversations.get_signed_url(
                agent_id=settings.speech_engine_id, request_options={"max_retries": 1}
            )
            self.socket = await session.ws_connect(
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
                extra={"call_sid": self.call_sid},
            )
            raise CallEnded(EndReason.UPSTREAM_UNREACHABLE) from None

    async def _wait_for_metadata(self) -> el.Metadata:
        while (raw := await self._receive()) is not None:
            event = el.parse(raw)
            if type(event) is el.Metadata:
                return event
            if type(event) is el.Ping:
                await self.send(el.pong(event.event_id))
            elif type(event) is el.Error:
                self._error(event)
            else:
                self.dropped += 1
        raise CallEnded(self._close_reason())

    # --- relaying -----------------------------------------------------------------------------

    async def run(self, call: CallControl, twilio: TwilioLeg) -> NoReturn:
        """ElevenLabs' frames until the socket closes (the hot path: every chunk of agent audio)."""
        parse = el.parse
        send_twilio = twilio.send
        out = twilio.out
        assert out is not None
        loop = self.loop
        receive = self._receive
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
                await self.send(el.pong(event.event_id))  # type: ignore[union-attr]
            elif kind is el.Interruption:
                self.interrupted_id = max(self.interrupted_id, event.event_id)  # type: ignore[union-attr]
                await send_twilio(out.clear())
                call.cleared()
                log.debug("interruption", extra={"call_sid": call.call_sid, "event_id": self.interrupted_id})
            elif kind is el.Error:
                self._error(event)  # type: ignore[arg-type]
            elif event is None:
                self.dropped += 1
        raise CallEnded(self._close_reason())

    def _error(self, event: el.Error) -> None:
        """ElevenLabs reports a problem; it closes the socket if the conversation cannot go on."""
        self.metrics.elevenlabs_errors.inc()
        log.warning(
            "ElevenLabs error: %s %s",
            event.error_type,
            event.message,
            extra={"call_sid": self.call_sid, "code": event.code},
        )

    async def _receive(self) -> str | bytes | None:
        """The next data frame from ElevenLabs; None once the socket is closed or broken."""
        socket = self.socket
        assert socket is not None
        message = await socket.receive()
        kind = message.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            return message.data  # binary is not ElevenLabs: parse() drops and counts it
        return None  # close, closing, closed, error (aiohttp has closed the socket)

    def _close_reason(self) -> EndReason:
        code = self.socket.close_code if self.socket is not None else None
        if code == NORMAL_CLOSURE:
            return EndReason.AGENT_ENDED
        log.warning("ElevenLabs closed the conversation abnormally (code %s)", code, extra={"call_sid": self.call_sid})
        return EndReason.UPSTREAM_DROPPED

    async def send(self, data: str) -> None:
        """Bounded by the relay's watchdog, not a timer per frame: this is the hot path."""
        socket = self.socket
        assert socket is not None
        self.send_since = self.loop.time()
        try:
            await socket.send_str(data)
        except (ConnectionError, aiohttp.ClientError):
            raise CallEnded(self._close_reason()) from None
        finally:
            self.send_since = None

    async def close(self) -> None:
        """Stop an opening still under way, and close the socket."""
        if self.opening is not None:
            self.opening.cancel()
            await asyncio.gather(self.opening, return_exceptions=True)
        if self.socket is None:
            return
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                await self.socket.close()
        except Exception:
            pass  # closing a dead socket: nothing left to do

    # --- bookkeeping --------------------------------------------------------------------------

    def _count_response(self, audio: el.Audio) -> None:
        if audio.event_id != self.response_id:
            self.log_response_end()
            self.response_id = audio.event_id
            self.response_bytes = 0
        payload = audio.payload
        self.response_bytes += len(payload) * 3 // 4 - payload.endswith("=") - payload.endswith("==")

    def log_response_end(self) -> None:
        if self.response_id is not None and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "agent response relayed",
                extra={"call_sid": self.call_sid, "event_id": self.response_id, "bytes": self.response_bytes},
            )

    def count(self, metrics: Metrics) -> None:
        metrics.relayed_frames.labels("agent_to_caller").inc(self.frames_out)
        if self.dropped:
            metrics.dropped_frames.labels("elevenlabs", "malformed").inc(self.dropped)
        if self.stale_dropped:
            metrics.dropped_frames.labels("elevenlabs", "interrupted").inc(self.stale_dropped)


class EarlyStarts:
    """Conversations opened when the webhook arrived, by call SID, until their stream claims them."""

    def __init__(self, telephony: Telephony) -> None:
        self.telephony = telephony
        self.enabled = True  # benchmarks compare with the conversation opened once the stream has started
        self._waiting: dict[str, ElevenLabsLeg] = {}
        self._expiries: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def begin(self, call_sid: str, caller: str, first: str | None = None) -> None:
        """Start opening the call's conversation (once: Twilio may post a webhook again)."""
        if not self.enabled or call_sid in self._waiting:
            return
        leg = ElevenLabsLeg(self.telephony, call_sid, caller, first)
        leg.open_early()
        self._waiting[call_sid] = leg
        expiry = asyncio.get_running_loop().create_task(self._expire(leg), name=f"elevenlabs-unclaimed-{call_sid}")
        self._expiries.add(expiry)
        expiry.add_done_callback(self._expiries.discard)

    def claim(self, call_sid: str) -> ElevenLabsLeg | None:
        """The conversation opened for this call, which its stream now takes over."""
        leg = self._waiting.pop(call_sid, None)
        if leg is not None:
            self.telephony.metrics.early_conversations.labels("claimed").inc()
        return leg

    async def _expire(self, leg: ElevenLabsLeg) -> None:
        assert leg.opening is not None
        stopping = True  # cancelled: the server is stopping
        try:
            await asyncio.wait([leg.opening])  # open (or failed): the wait for its stream starts now
            await asyncio.sleep(self.telephony.limits.early_unclaimed)
            stopping = False
        finally:
            if self._waiting.get(leg.call_sid) is leg:
                del self._waiting[leg.call_sid]
                if not stopping:
                    self.telephony.metrics.early_conversations.labels("unclaimed").inc()
                    log.info("conversation closed unused: no media stream for its call here", extra={
                        "call_sid": leg.call_sid})  # fmt: skip
                await leg.close()

    async def close(self) -> None:
        expiries = list(self._expiries)
        for expiry in expiries:
            expiry.cancel()
        await asyncio.gather(*expiries, return_exceptions=True)
