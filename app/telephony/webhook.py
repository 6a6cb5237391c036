"""Twilio's voice webhook (POST /incoming-call) and the Connect action (POST /connect-action); a
transfer's routes are in `handoff`.

Both refuse with 403, and keep no call state, unless X-Twilio-Signature matches the public URL.
TwiML is built only with the twilio helper library.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime

from quart import Blueprint, Response, request
from twilio.twiml.voice_response import Connect, VoiceResponse

from app.calls.control import EndReason, Returned
from app.calls.shared import COMMAND_TIMEOUT_S
from app.observability import mask_digits
from app.records.events import CallReceived, CallRefused
from app.records.messages import caller_number
from app.services import services
from app.settings import Settings
from app.telephony import call_token
from app.telephony.bridge import STREAM_PATH
from app.telephony.call_actions import drained_twiml
from app.telephony.signatures import public_url, raw_path, stream_url, valid_signature
from app.telephony.state import Telephony, bounded

log = logging.getLogger("switchboard.twilio")
twilio_webhook = Blueprint("twilio_webhook", __name__)

INCOMING_PATH = "/incoming-call"
ACTION_PATH = "/connect-action"
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
MAX_HANDOFFS = 3  # webhooks a replica that takes no calls hands on before turning the caller away


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), status=200, content_type="text/xml")


def busy_twiml(settings: Settings) -> VoiceResponse:
    r = VoiceResponse()
    r.say(
        f"Thank you for calling {settings.company_name}. All of our lines are busy right now. "
        "Please call again in a few minutes. Goodbye."
    )
    r.hangup()
    return r


def connect_twiml(
    settings: Settings, caller: str, token: str, returned: Returned | None = None, say: str | None = None
) -> VoiceResponse:
    """The call's audio to the bridge; for a call back from a transfer, which one and the agent's
    first words (the token vouches for both)."""
    r = VoiceResponse()
    connect = Connect(action=public_url(settings, ACTION_PATH), method="POST")
    stream = connect.stream(url=stream_url(settings, STREAM_PATH))
    stream.parameter(name="caller", value=caller)
    stream.parameter(name="token", value=token)
    if returned is not None:
        stream.parameter(name="transfer", value=returned.encode())
        stream.parameter(name="say", value=say or "")
    r.append(connect)
    return r


def ended_twiml(settings: Settings, reason: EndReason | None) -> VoiceResponse:
    """What the caller hears once the stream has ended. Never silence."""
    if reason is EndReason.DRAINED:
        return drained_twiml(settings)
    r = VoiceResponse()
    if reason is EndReason.MAX_DURATION:
        r.say("We have reached the time limit for this call. Thank you for calling, goodbye.")
        r.hangup()
    elif reason is not None and not reason.failed:
        r.hangup()
    elif settings.fallback_number:
        r.say("Sorry, our assistant is having trouble right now. Let me put you through to a member of our team.")
        r.dial(settings.fallback_number)
        r.hangup()
    else:
        r.say("Sorry, our assistant is having trouble right now. Please call again a little later. Goodbye.")
        r.hangup()
    return r


async def signed_form() -> object | None:
    """The form if X-Twilio-Signature is valid for the public URL of this exact path and query."""
    settings = services().settings
    form = await request.form
    if settings.public_url is None:
        return None
    url = public_url(settings, raw_path(request.scope, request.path), request.query_string)
    return form if valid_signature(settings, [url], form, request.headers) else None


def _not_here(call_sid: str, now: datetime, log_extra: dict[str, str]) -> VoiceResponse:
    """This replica takes no new call (it is draining, or Redis is unreachable): hand the webhook to
    another replica if one takes calls (Twilio posts it again, and the load balancer routes it
    elsewhere), else turn the caller away to FALLBACK_NUMBER or with the busy message."""
    svc = services()
    settings = svc.settings
    attempt = request.args.get("attempt", "1")
    attempt_no = int(attempt) if attempt.isdigit() and len(attempt) < 3 else MAX_HANDOFFS
    shared = svc.shared
    if shared is not None and shared.available and shared.others_taking_calls and attempt_no < MAX_HANDOFFS:
        svc.metrics.twilio_rejected.labels("handed_on").inc()
        log.info("incoming call handed to another replica (attempt %d)", attempt_no, extra=log_extra)
        r = VoiceResponse()
        r.redirect(public_url(settings, INCOMING_PATH, f"attempt={attempt_no + 1}".encode()), method="POST")
        return r
    why = "draining" if svc.drain.draining else "shared_state_unavailable"
    svc.metrics.twilio_rejected.labels(why).inc()
    log.warning("incoming call turned away: %s", why.replace("_", " "), extra=log_extra)
    svc.records.record(CallRefused(call_sid, "busy", now))
    return ended_twiml(settings, None) if settings.fallback_number else busy_twiml(settings)


async def _reserve(telephony: Telephony, call_sid: str) -> bool | None:
    """A slot for the call: False when every slot is taken, None when the shared store cannot say."""
    reserved = telephony.slots.reserve(call_sid)
    return await bounded(reserved, COMMAND_TIMEOUT_S, None, "admission unavailable", log, {"call_sid": call_sid})


async def _outcome(telephony: Telephony, call_sid: str) -> EndReason | None:
    outcome = telephony.outcomes.get(call_sid)
    return await bounded(outcome, COMMAND_TIMEOUT_S, None, "stream outcome unavailable", log, {"call_sid": call_sid})


def refuse(reason: str) -> tuple[str, int]:
    services().metrics.twilio_rejected.labels(reason).inc()
    log.warning("Twilio webhook refused: %s", reason, extra={"path": request.path})
    return "forbidden\n", 403


@twilio_webhook.post(INCOMING_PATH)
async def incoming_call() -> Response | tuple[str, int]:
    svc = services()
    settings, telephony = svc.settings, svc.telephony
    form = await signed_form()
    if form is None:
        return refuse("signature")
    call_sid = form.get("CallSid", "")
    caller = form.get("From", "")[:64]
    if not _CALL_SID.fullmatch(call_sid):
        return "bad request\n", 400
    log_extra = {"call_sid": call_sid, "caller": mask_digits(caller)}
    now = datetime.now(UTC)
    svc.records.record(CallReceived(call_sid, caller_number(caller), now))
    if not telephony.bridge_configured:
        log.error("incoming call sent to the fallback: ElevenLabs is not configured", extra=log_extra)
        svc.records.record(CallRefused(call_sid, "fallback", now))
        return _twiml(ended_twiml(settings, None))
    if svc.drain.draining or (svc.shared is not None and not svc.shared.available):
        return _twiml(_not_here(call_sid, now, log_extra))
    admitted = await _reserve(telephony, call_sid)
    if admitted is None:
        return _twiml(_not_here(call_sid, now, log_extra))
    if not admitted:
        svc.records.record(CallRefused(call_sid, "busy", now))
        svc.metrics.twilio_rejected.labels("busy").inc()
        log.warning("incoming call refused: no free line", extra=log_extra)
        return _twiml(busy_twiml(settings))
    key = call_token.derive_key(settings.secret("twilio_auth_token") or "")
    token = call_token.issue(key, call_sid, caller, time.time())
    # The caller is looked up, and ElevenLabs' side set up, while Twilio opens the media stream
    # (covered by the slot just reserved).
    telephony.lookups.begin(call_sid, caller_number(caller))
    telephony.early.begin(call_sid, caller)
    log.info("incoming call", extra=log_extra)
    return _twiml(connect_twiml(settings, caller, token))


@twilio_webhook.post(ACTION_PATH)
async def connect_action() -> Response | tuple[str, int]:
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("action_signature")
    call_sid = form.get("CallSid", "")
    reason = await _outcome(svc.telephony, call_sid) if _CALL_SID.fullmatch(call_sid) else None
    log.info("connect action: stream ended %s", reason or "unknown", extra={"call_sid": call_sid[:40]})
    return _twiml(ended_twiml(svc.settings, reason))
