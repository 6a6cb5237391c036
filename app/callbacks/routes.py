"""A call-back's routes: the TwiML Twilio asks for when the call is answered, and its status callbacks.

Both check X-Twilio-Signature exactly as the voice webhook does (403 otherwise), and may reach any
replica: what they share is the call-back's row in the records store. Their URL names the
call-back and the try (`callback`, `attempt`), which Twilio signs with the rest; a request for an
older try, or for a call-back that is no longer being called, changes nothing.

The answer depends on `AnsweredBy` (answering-machine detection): a person (or `unknown`) gets the
agent, on a `<Connect><Stream>` whose conversation opens with who is calling and why; a machine,
after its beep, gets the voicemail in the agent's own voice, and the bridge hangs up once it has
been heard; a fax is hung up on, and the number is not called again.
"""

from __future__ import annotations

import logging
import re
import time

from quart import Blueprint, Response, request
from twilio.twiml.voice_response import VoiceResponse

from app.callbacks.dialer import ANSWER_PATH, STATUS_PATH, slot_key
from app.callbacks.lines import opening_line, voicemail_line
from app.callbacks.store import CALLING, NOT_CALLABLE, REACHED, VOICEMAIL
from app.calls.control import Outbound
from app.calls.shared import COMMAND_TIMEOUT_S
from app.observability import mask_digits
from app.records.events import CallEnded, CallPlaced
from app.services import Services, services
from app.telephony import call_token
from app.telephony.state import bounded
from app.telephony.webhook import connect_twiml, refuse, signed_form

log = logging.getLogger("switchboard.callbacks")
callback_routes = Blueprint("callbacks", __name__)

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
UNANSWERED = {"busy": "busy", "no-answer": "no_answer", "failed": "failed", "canceled": "failed"}
UNDER_WAY = ("initiated", "ringing", "in-progress", "answered")


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), status=200, content_type="text/xml")


def _hang_up() -> Response:
    r = VoiceResponse()
    r.hangup()
    return _twiml(r)


def _try() -> tuple[int, int] | None:
    """The call-back and the try the URL names."""
    callback, attempt = request.args.get("callback", ""), request.args.get("attempt", "")
    if not (callback.isdigit() and attempt.isdigit() and len(callback) < 19 and len(attempt) < 4):
        return None
    return int(callback), int(attempt)


@callback_routes.post(ANSWER_PATH)
async def answer() -> Response | tuple[str, int]:
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("callback_signature")
    named = _try()
    call_sid = form.get("CallSid", "")
    if named is None or not _CALL_SID.fullmatch(call_sid):
        return "bad request\n", 400
    callback_id, attempt = named
    store = svc.callbacks
    found = await store.current(callback_id, attempt)
    target = await store.target(callback_id)
    extra = {"call_sid": call_sid, "callback": callback_id}
    if found is None or found.state != CALLING or target is None:
        log.warning("answered call-back that is not being called: hung up", extra=extra)
        return _hang_up()
    await store.seen(callback_id, attempt, call_sid)
    now = svc.clock.now(call_sid)
    svc.records.record(CallPlaced(call_sid, target.number, target.message_id, now))
    answered_by = form.get("AnsweredBy", "unknown")[:32]
    telephony = svc.telephony
    slots = telephony.slots
    if answered_by == "fax":
        await store.answered(callback_id, attempt, NOT_CALLABLE, now, "a fax machine answered")
        await bounded(slots.release(slot_key(callback_id, attempt)), COMMAND_TIMEOUT_S, None, "release", log, extra)
        svc.records.record(CallEnded(call_sid, "agent_ended", "fax", now, 0.0))
        log.info("call-back reached a fax machine: not called again", extra=extra)
        return _hang_up()
    # The try's slot becomes the call's own (Twilio opens the stream next).
    admitted = await bounded(slots.reserve(call_sid), COMMAND_TIMEOUT_S, None, "admission", log, extra)
    await bounded(slots.release(slot_key(callback_id, attempt)), COMMAND_TIMEOUT_S, None, "release", log, extra)
    if not admitted:
        log.warning("call-back answered with no free line: tried again later", extra=extra)
        await svc.dialer.tried(callback_id, attempt, "failed")
        svc.records.record(CallEnded(call_sid, "busy", "no_free_line", now, 0.0))
        r = VoiceResponse()
        r.say(f"Sorry, this is {svc.settings.company_name}: we will call you back a little later. Goodbye.")
        r.hangup()
        return _twiml(r)
    machine = answered_by.startswith("machine")
    mode, state = ("voicemail", VOICEMAIL) if machine else ("talk", REACHED)
    if machine:
        say = voicemail_line(svc.settings, target.name, target.message)
    else:
        say = opening_line(svc.settings, target.name, target.message, target.department)
    await store.answered(callback_id, attempt, state, now)
    log.info(
        "call-back answered by %s", answered_by or "unknown", extra={**extra, "callee": mask_digits(target.number)}
    )
    if machine and await telephony.greeting(say) is None:
        # The engine does not take a first message: the voicemail in Twilio's voice rather than none.
        r = VoiceResponse()
        r.say(say)
        r.hangup()
        return _twiml(r)
    return _twiml(_stream(svc, call_sid, target.number, Outbound(callback_id, mode), say))


def _stream(svc: Services, call_sid: str, callee: str, outbound: Outbound, say: str) -> VoiceResponse:
    settings = svc.settings
    key = call_token.derive_key(settings.secret("twilio_auth_token") or "")
    context = f"callback {outbound.encode()}\n{say}"
    token = call_token.issue(key, call_sid, callee, time.time(), context=context)
    svc.telephony.early.begin(call_sid, callee, say)
    return connect_twiml(settings, callee, token, say=say, outbound=outbound)


@callback_routes.post(STATUS_PATH)
async def status() -> Response | tuple[str, int]:
    """How a try is going: under way (its call SID noted), or over without an answer (another try later)."""
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("callback_status_signature")
    named = _try()
    call_sid = form.get("CallSid", "")
    if named is None or not _CALL_SID.fullmatch(call_sid):
        return "bad request\n", 400
    callback_id, attempt = named
    call_status = form.get("CallStatus", "")[:20]
    store = svc.callbacks
    extra = {"call_sid": call_sid, "callback": callback_id}
    if call_status in UNDER_WAY:
        await store.seen(callback_id, attempt, call_sid)
        return "", 204
    await bounded(
        svc.telephony.slots.release(slot_key(callback_id, attempt)), COMMAND_TIMEOUT_S, None, "release", log, extra
    )
    if call_status in UNANSWERED:
        await svc.dialer.tried(callback_id, attempt, UNANSWERED[call_status])
    elif call_status == "completed":
        found = await store.current(callback_id, attempt)
        if found is not None and found.state == CALLING:  # over, but its TwiML was never asked for
            await svc.dialer.tried(callback_id, attempt, "failed")
    svc.dialer.wake()
    return "", 204
