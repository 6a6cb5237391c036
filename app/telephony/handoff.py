"""A transfer's routes (see `transfers`): the whisper and the key pressed on the colleague's leg, the
`<Dial action>` on the caller's call, and the way back to the agent.

Each checks X-Twilio-Signature exactly as the voice webhook does (403 otherwise), and each may reach
any replica: what they share is the transfer's record (`Transfers`). The whisper and the key name
the caller's call in their URL (`call`), which Twilio signs with the rest. A whisper or a key for a call
with no transfer declines; a dial action for one, or arriving again, changes nothing (the caller
still gets TwiML: never silence).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from quart import Blueprint, Response, request
from twilio.twiml.voice_response import VoiceResponse

from app.calls.control import Returned
from app.calls.shared import COMMAND_TIMEOUT_S
from app.departments.schedule import next_opening
from app.departments.spoken import when, zone_name
from app.records.events import CallEnded, TransferResult
from app.services import Services, services
from app.telephony import call_token
from app.telephony.call_actions import after_dial_twiml
from app.telephony.state import bounded
from app.telephony.transfers import (
    BACK_PATH,
    DIAL_ACTION_PATH,
    SCREEN_PATH,
    WHISPER_PATH,
    Transfer,
    result_of,
    return_line,
    screened_twiml,
    whisper_twiml,
)
from app.telephony.webhook import busy_twiml, connect_twiml, ended_twiml, refuse, signed_form

log = logging.getLogger("switchboard.handoff")
handoff = Blueprint("handoff", __name__)

_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
BACK_RESULTS = frozenset({"no_answer", "busy", "failed", "declined", "voicemail", "closed"})


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), status=200, content_type="text/xml")


async def _transfer(svc: Services, call_sid: str) -> Transfer | None:
    found = svc.telephony.transfers.get(call_sid) if _CALL_SID.fullmatch(call_sid) else None
    if found is None:
        return None
    return await bounded(found, COMMAND_TIMEOUT_S, None, "transfer record unavailable", log, {"call_sid": call_sid})


@handoff.post(WHISPER_PATH)
async def whisper() -> Response | tuple[str, int]:
    """On the colleague's leg, once they answer: who is calling and why, and press 1."""
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("whisper_signature")
    call_sid = request.args.get("call", "")
    transfer = await _transfer(svc, call_sid)
    answered_by = form.get("AnsweredBy", "")[:32]
    extra = {"call_sid": call_sid[:40]}
    if transfer is None:
        log.warning("whisper for a call with no transfer: declined", extra=extra)
        r = VoiceResponse()
        r.hangup()
        return _twiml(r)
    if answered_by.startswith(("machine", "fax")):
        log.info("transfer to %s reached a voicemail", transfer.department, extra=extra)
        await bounded(svc.telephony.transfers.choose(call_sid, "voicemail"), COMMAND_TIMEOUT_S, None, "choice", log)
    return _twiml(whisper_twiml(svc.settings, transfer, answered_by))


@handoff.post(SCREEN_PATH)
async def screen() -> Response | tuple[str, int]:
    """The key the colleague pressed: 1 takes the call, anything else declines it."""
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("screen_signature")
    call_sid = request.args.get("call", "")
    digit = form.get("Digits", "")[:4]
    transfer = await _transfer(svc, call_sid)
    if transfer is None:
        return _twiml(screened_twiml(""))
    taken = digit == "1"
    choice = "accepted" if taken else "declined"
    await bounded(svc.telephony.transfers.choose(call_sid, choice), COMMAND_TIMEOUT_S, None, "choice", log)
    log.info("transfer to %s %s", transfer.department, choice, extra={"call_sid": call_sid[:40]})
    return _twiml(screened_twiml(digit))


@handoff.post(DIAL_ACTION_PATH)
async def dial_action() -> Response | tuple[str, int]:
    """The dial is over: the caller stays with the colleague who took it, or comes back to the agent."""
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("dial_action_signature")
    call_sid = form.get("CallSid", "")
    status = form.get("DialCallStatus", "")[:20]
    extra = {"call_sid": call_sid[:40]}
    transfer = await _transfer(svc, call_sid)
    if transfer is None:
        log.warning("dial action for a call with no transfer (%s): nothing recorded", status or "unknown", extra=extra)
        return _twiml(after_dial_twiml(svc.settings, status))
    if transfer.result:  # settled already (the action arrived again): the same answer, and nothing changes
        result, first = transfer.result, False
    else:
        result = result_of(status, transfer)
        settling = svc.telephony.transfers.settle(call_sid, result)
        first = await bounded(settling, COMMAND_TIMEOUT_S, False, "transfer not settled", log, extra)
    log.info("transfer to %s: %s (%s)%s", transfer.department, result, status, "" if first else ", again", extra=extra)
    if first:
        now = datetime.now(UTC)
        svc.records.record(TransferResult(call_sid, transfer.department, result, now))
        if result in ("connected", "canceled"):
            ended = "transferred" if result == "connected" else "caller_hung_up"
            svc.records.record(CallEnded(call_sid, ended, f"transfer_{result}", now, 0.0))
    if result not in BACK_RESULTS:
        r = VoiceResponse()
        r.hangup()  # the colleague and the caller have finished (or the caller has gone)
        return _twiml(r)
    return _twiml(await _back(svc, call_sid, form.get("From", ""), Returned(transfer.department, result), first))


@handoff.post(BACK_PATH)
async def back() -> Response | tuple[str, int]:
    """A call sent back to the agent without ringing anyone (the keypad's 0 with everyone closed)."""
    svc = services()
    form = await signed_form()
    if form is None:
        return refuse("back_signature")
    call_sid = form.get("CallSid", "")
    department, result = request.args.get("department", ""), request.args.get("result", "")
    if not _CALL_SID.fullmatch(call_sid) or svc.directory.get(department) is None or result not in BACK_RESULTS:
        return "bad request\n", 400
    return _twiml(await _back(svc, call_sid, form.get("From", ""), Returned(department, result), True))


async def _back(svc: Services, call_sid: str, caller: str, returned: Returned, first: bool) -> VoiceResponse:
    """A new `<Connect><Stream>` on the same call, whose conversation opens saying what happened. Its
    slot is reserved (the call gave it up while it rang), and ElevenLabs' side starts at once."""
    settings, telephony = svc.settings, svc.telephony
    caller = caller[:64]
    extra: dict[str, Any] = {"call_sid": call_sid}
    admitted = await bounded(telephony.slots.reserve(call_sid), COMMAND_TIMEOUT_S, None, "admission", log, extra)
    if not admitted:
        log.warning("call not brought back to the agent: no free line", extra=extra)
        return ended_twiml(settings, None) if settings.fallback_number else busy_twiml(settings)
    opens = _opens(svc, returned.department, call_sid) if returned.result == "closed" else None
    say = return_line(returned.department, returned.result, opens)
    key = call_token.derive_key(settings.secret("twilio_auth_token") or "")
    context = f"{returned.encode()}\n{say}"
    token = call_token.issue(key, call_sid, caller, time.time(), context=context)
    if first:
        telephony.early.begin(call_sid, caller, say)
    log.info("back to the agent after %s", returned.encode(), extra=extra)
    return connect_twiml(settings, caller, token, returned, say)


def _opens(svc: Services, name: str, call_sid: str) -> str | None:
    department = svc.directory.get(name)
    if department is None:
        return None
    now = svc.directory.now(call_sid)
    opens = next_opening(department, now)
    return f"{when(opens, now, department)}, {zone_name(department)}" if opens is not None and opens > now else None
