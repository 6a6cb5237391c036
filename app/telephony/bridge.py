"""GET /media-stream: Twilio Media Streams ⇄ an ElevenLabs conversation, one relay per call.

Each leg has its own module: `twilio_leg` (the stream, its signature, `start`, the caller's audio,
marks, keys) and `elevenlabs_leg` (the conversation: opened early, then relayed). This one admits a
stream and supervises the call: the per-call token in `start` is checked, and the admission slot
claimed, before anything upstream is used; a mark follows each burst of agent audio so
`CallControl` knows what the caller has heard; a watchdog bounds every send.

One TaskGroup per call (Twilio leg, ElevenLabs leg, supervisor, watchdog): whichever ends first
raises `CallEnded`, which cancels the others; `finally` closes both sockets and records why the
stream ended, which is what the Connect action reads to decide between hanging up and apologising.

The route is served on bare ASGI in front of Quart (`MediaStreamRoute`): each call passes 50 frames a
second each way, and Quart's per-message queue hop and signals cost about 0.1 % of a core per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, NoReturn

from quart import Quart

from app.calls.control import CallControl, CallEnded, EndReason, Outbound, Returned
from app.observability import mask_digits
from app.telephony import call_token
from app.telephony.elevenlabs_leg import ElevenLabsLeg
from app.telephony.state import Telephony, bounded
from app.telephony.twilio_frames import Start
from app.telephony.twilio_leg import TwilioLeg, TwilioSocket, upgrade_is_signed

log = logging.getLogger("switchboard.bridge")

STREAM_PATH = "/media-stream"
# Close codes towards Twilio: normal end, and "policy" for a stream we refuse after accepting.
NORMAL_CLOSURE = 1000
POLICY_VIOLATION = 1008
# Agent audio is marked once it pauses this long, or this often while it goes on.
MARK_QUIET_S = 0.1
MARK_EVERY_S = 1.0
# A voicemail is hung up once it has been heard, and after this at the latest.
VOICEMAIL_MAX_S = 60.0
VOICEMAIL_SETTLE_S = 1.0


class MediaStreamRoute:
    """ASGI in front of the Quart app: GET /media-stream is served here, everything else by Quart."""

    def __init__(self, app: Quart, telephony: Telephony) -> None:
        self.quart = app.asgi_app
        self.telephony = telephony

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or scope["path"] != STREAM_PATH:
            return await self.quart(scope, receive, send)
        await media_stream(self.telephony, TwilioSocket(scope, receive, send))


async def media_stream(telephony: Telephony, socket: TwilioSocket) -> None:
    if not await socket.connected():
        return
    if not upgrade_is_signed(telephony, socket):
        telephony.metrics.twilio_rejected.labels("stream_signature").inc()
        log.warning("media stream refused: bad or missing X-Twilio-Signature")
        await socket.refuse()
        return
    await socket.accept()
    await Relay(telephony, TwilioLeg(telephony, socket)).run()


class Relay:
    """One call's media stream and its ElevenLabs conversation."""

    def __init__(self, telephony: Telephony, twilio: TwilioLeg) -> None:
        self.telephony = telephony
        self.limits = telephony.limits
        self.twilio = twilio
        self.upstream: ElevenLabsLeg | None = None
        self.call: CallControl | None = None

    async def run(self) -> None:
        start = await self.twilio.wait_for_start()
        if start is None or not await self._admit(start):
            await self.twilio.close(POLICY_VIOLATION)
            return
        call, upstream = self.call, self.upstream
        assert call is not None and upstream is not None
        self.telephony.metrics.calls_active.inc()
        started = time.monotonic()
        # Kept if the relay is cancelled: the server is stopping and gave up waiting for this call.
        reason = EndReason.TWILIO_DROPPED
        try:
            reason = await self._relay(call, upstream)
        finally:
            await self._finish(call, upstream, reason, time.monotonic() - started)

    async def _relay(self, call: CallControl, upstream: ElevenLabsLeg) -> EndReason:
        reason = EndReason.INTERNAL_ERROR
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.twilio.run(call, upstream), name=f"bridge-twilio-{call.call_sid}")
                tasks.create_task(self._converse(call, upstream), name=f"bridge-elevenlabs-{call.call_sid}")
                tasks.create_task(self._supervise(call), name=f"bridge-supervisor-{call.call_sid}")
                tasks.create_task(self._watch_and_mark(call, upstream), name=f"bridge-watchdog-{call.call_sid}")
                if call.outbound is not None and call.outbound.mode == "voicemail":
                    tasks.create_task(self._voicemail(call), name=f"bridge-voicemail-{call.call_sid}")
        except* CallEnded as ended:
            reason = ended.exceptions[0].reason  # type: ignore[attr-defined]
        except* Exception:
            log.exception("bridge failed", extra={"call_sid": call.call_sid})
            reason = EndReason.INTERNAL_ERROR
        return reason

    async def _finish(self, call: CallControl, upstream: ElevenLabsLeg, reason: EndReason, seconds: float) -> None:
        telephony = self.telephony
        telephony.calls.pop(call.call_sid, None)
        # Before Twilio's socket closes: the Connect action it posts next reads this.
        await self._shared(telephony.outcomes.record(call.call_sid, reason), "outcome")
        metrics = telephony.metrics
        metrics.calls_active.dec()
        metrics.calls.labels(reason.value).inc()
        metrics.call_seconds.observe(seconds)
        self.twilio.count(metrics)
        upstream.count(metrics)
        await upstream.close()
        await self.twilio.close(NORMAL_CLOSURE)  # nothing to do if Twilio has already gone
        call.finish(reason)
        upstream.log_response_end()
        log.log(
            logging.WARNING if reason.failed else logging.INFO,
            "call ended: %s after %.1f s",
            reason.value,
            seconds,
            extra={
                "call_sid": call.call_sid,
                "conversation_id": call.conversation_id,
                "frames_in": self.twilio.frames_in,
                "frames_out": upstream.frames_out,
                "dropped": self.twilio.dropped + upstream.dropped,
            },
        )
        for observer in list(telephony.observers):
            await self._notify(observer.call_ended(call), "call_ended")
        await self._shared(telephony.slots.release(call.call_sid), "release")

    async def _shared(self, work: Any, what: str) -> None:
        """Shared call state at a call's start or end: bounded, and its failure never the call's."""
        await bounded(work, self.limits.observer_timeout, None, f"call state not updated ({what})", log)

    async def _notify(self, callback: Any, what: str) -> None:
        try:
            async with asyncio.timeout(self.limits.observer_timeout):
                await callback
        except Exception:
            log.exception("call observer failed in %s", what)

    # --- before the call: token, admission ----------------------------------------------------

    async def _admit(self, start: Start) -> bool:
        telephony = self.telephony
        params = start.custom_parameters
        caller = params.get("caller", "")
        # A call back from a transfer, or a call-back the agent placed: which one, and the agent's
        # first words, as the token vouches.
        returned = Returned.decode(params.get("transfer"))
        outbound = Outbound.decode(params.get("callback")) if returned is None else None
        first = params.get("say") or None if returned is not None or outbound is not None else None
        context = ""
        if returned is not None:
            context = f"{returned.encode()}\n{first or ''}"
        elif outbound is not None:
            context = f"callback {outbound.encode()}\n{first or ''}"
        key = call_token.derive_key(telephony.settings.secret("twilio_auth_token") or "")
        extra = {"call_sid": start.call_sid[:40]}
        if not call_token.verify(key, params.get("token"), start.call_sid, caller, time.time(), context):
            telephony.metrics.twilio_rejected.labels("call_token").inc()
            log.warning("media stream refused: bad or expired call token", extra=extra)
            return False
        if not await self._claim(start.call_sid):
            telephony.metrics.twilio_rejected.labels("stream_busy").inc()
            log.warning("media stream refused: call already streaming, or no free slot", extra=extra)
            return False
        # The conversation opened when the webhook arrived, if it arrived here; else one of its own.
        self.upstream = telephony.early.claim(start.call_sid) or ElevenLabsLeg(telephony, start.call_sid, caller, first)
        self.call = CallControl(start.call_sid, start.stream_sid, caller, self.twilio.send_mark, returned, outbound)
        telephony.calls[start.call_sid] = self.call
        return True

    async def _claim(self, call_sid: str) -> bool:
        """The stream takes the slot its webhook reserved. If the shared store cannot say, the call
        goes on: its webhook admitted it and its token is valid."""
        claimed = self.telephony.slots.claim(call_sid)
        return await bounded(
            claimed, self.limits.observer_timeout, True, "admission not checked, the call goes on", log
        )

    # --- the four tasks -----------------------------------------------------------------------

    async def _converse(self, call: CallControl, upstream: ElevenLabsLeg) -> NoReturn:
        """The ElevenLabs leg: once the conversation is open, the call has started."""
        await upstream.opened()
        meta = upstream.metadata
        assert meta is not None
        call.conversation_id = meta.conversation_id
        call.greeting = upstream.greeting
        log.info(
            "call started from %s",
            mask_digits(call.caller),
            extra={
                "call_sid": call.call_sid,
                "stream_sid": call.stream_sid,
                "conversation_id": meta.conversation_id,
                "early": upstream.opening is not None,
            },
        )
        for observer in list(self.telephony.observers):
            await self._notify(observer.call_started(call), "call_started")
        await self.twilio.release_held(upstream)
        await upstream.run(call, self.twilio)

    async def _watch_and_mark(self, call: CallControl, upstream: ElevenLabsLeg) -> NoReturn:
        """Every MARK_QUIET_S: end a call whose send to either peer has hung past the send timeout,
        and mark agent audio after each burst (MARK_QUIET_S without a chunk), or every MARK_EVERY_S
        during a long one. Not one mark per chunk, which would double Twilio traffic."""
        loop = asyncio.get_running_loop()
        twilio = self.twilio
        limit = self.limits.send_timeout
        marked_at = loop.time()
        while True:
            await asyncio.sleep(MARK_QUIET_S)
            now = loop.time()
            upstream_since, twilio_since = upstream.send_since, twilio.send_since
            if upstream_since is not None and now - upstream_since > limit:
                raise CallEnded(EndReason.UPSTREAM_STALLED)
            if twilio_since is not None and now - twilio_since > limit:
                raise CallEnded(EndReason.TWILIO_STALLED)
            if not call.unmarked_audio:
                continue
            if now - upstream.last_audio_at >= MARK_QUIET_S or now - marked_at >= MARK_EVERY_S:
                marked_at = now
                await twilio.mark_audio(call.audio_mark(upstream.response_id or 0))

    async def _voicemail(self, call: CallControl) -> NoReturn:
        """A call-back a machine answered: the agent's first words are the voicemail; once the machine
        has heard them (Twilio's marks), hang up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(VOICEMAIL_MAX_S):
                while call.audio_progress == 0:  # noqa: ASYNC110 (polled, as marks are)
                    await asyncio.sleep(MARK_QUIET_S)
                await call.wait_heard(settle=VOICEMAIL_SETTLE_S, timeout=VOICEMAIL_MAX_S)
        log.info("voicemail left", extra={"call_sid": call.call_sid})
        raise CallEnded(EndReason.REQUESTED)

    async def _supervise(self, call: CallControl) -> NoReturn:
        try:
            async with asyncio.timeout(self.limits.max_call_seconds):
                reason = await call.end_requested()
        except TimeoutError:
            reason = EndReason.MAX_DURATION
        raise CallEnded(reason)
