"""Warm transfers with Twilio's call screening, and the way back to the agent (protocols.md E4).

A transfer redirects the caller's call to `<Dial action=DIAL_ACTION timeout=RING_SECONDS
answerOnBridge><Number url=WHISPER machineDetection=Enable>+1…</Number></Dial>`: the caller hears
ringing; when someone answers, Twilio requests the whisper on their leg, and they hear who is
calling (the name if the caller gave one, and the number) and why, in a `<Gather numDigits=1>`.
Pressing 1 answers with empty TwiML, so Twilio bridges the two; any other key, no key, or hanging
up declines; an answering machine is told nothing and hung up on. Twilio's `DialCallStatus` alone
cannot tell a call taken from one declined (both "completed"), so the person's choice is kept in
the shared transfer record (`Transfers`, Redis with several replicas), keyed by the caller's call
SID. A department with `screen = false` (and every TRANSFER_TARGETS one) gets a plain `<Dial>`.

When the dial is over, the `<Dial action>` learns the result from `DialCallStatus` and that record:
connected, or no_answer, busy, failed, declined, voicemail, which bring the caller back to the
agent on a new `<Connect><Stream>` of the same call (a new call token), the agent's first words
saying what happened; canceled means the caller hung up while it rang. A dial action settles its
transfer once: one for a call with no transfer, or one arriving again, changes nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Literal, Protocol
from urllib.parse import urlencode

from twilio.twiml.voice_response import Gather, VoiceResponse

from app.calls.control import Returned
from app.departments.schedule import Department
from app.departments.spoken import MESSAGE_FOR
from app.records.messages import caller_number, spoken_digits
from app.records.redact import redact
from app.settings import Settings
from app.telephony.signatures import public_url

DIAL_ACTION_PATH = "/dial-action"
WHISPER_PATH = "/transfer/whisper"
SCREEN_PATH = "/transfer/screen"
BACK_PATH = "/transfer/back"
ACCEPT_DIGIT = "1"
WHISPER_WAIT_S = 6  # how long the whisper waits for a key once it has been said
# Long enough for a dial action that comes only when a connected call ends.
TRANSFER_TTL_S = 24 * 3600
ANSWERED = frozenset({"completed", "answered"})
# What a transfer came to, on the call's record (and `closed`, refused before dialling).
RESULTS = ("connected", "no_answer", "busy", "failed", "declined", "voicemail", "canceled")
Choice = Literal["accepted", "declined", "voicemail"]


@dataclass(frozen=True)
class Transfer:
    """A transfer under way: who is calling and why, for the whisper; the person's choice; the result."""

    call_sid: str
    department: str
    caller: str  # as Twilio gave it: +E.164, or anything for a withheld number
    screen: bool
    reason: str = ""  # already cleaned and redacted
    name: str = ""
    choice: str = ""  # accepted, declined, voicemail: what the person who answered did
    result: str = ""  # set once, by the dial action

    def fields(self) -> dict[str, str]:
        return {
            key: str(value) if not isinstance(value, bool) else str(int(value)) for key, value in asdict(self).items()
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Transfer | None:
        try:
            return cls(
                call_sid=fields["call_sid"],
                department=fields["department"],
                caller=fields.get("caller", ""),
                screen=fields.get("screen") == "1",
                reason=fields.get("reason", ""),
                name=fields.get("name", ""),
                choice=fields.get("choice", ""),
                result=fields.get("result", ""),
            )
        except KeyError:
            return None


class Transfers(Protocol):
    """Transfers under way, by the caller's call SID: here, or shared through Redis."""

    async def begin(self, transfer: Transfer) -> None: ...

    async def get(self, call_sid: str) -> Transfer | None: ...

    async def choose(self, call_sid: str, choice: Choice) -> None:
        """What the person who answered did (kept only while the transfer is unsettled)."""

    async def settle(self, call_sid: str, result: str) -> bool:
        """Set the result; True the first time, False when it was already settled."""


class LocalTransfers:
    """The transfers of one process (bounded, and forgotten after TRANSFER_TTL_S)."""

    def __init__(self, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._clock = clock
        self._items: OrderedDict[str, tuple[Transfer, float]] = OrderedDict()

    async def begin(self, transfer: Transfer) -> None:
        self._items[transfer.call_sid] = (transfer, self._clock() + TRANSFER_TTL_S)
        self._items.move_to_end(transfer.call_sid)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    async def get(self, call_sid: str) -> Transfer | None:
        entry = self._items.get(call_sid)
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]

    async def choose(self, call_sid: str, choice: Choice) -> None:
        found = await self.get(call_sid)
        if found is not None and not found.result:
            self._items[call_sid] = (replace(found, choice=choice), self._items[call_sid][1])

    async def settle(self, call_sid: str, result: str) -> bool:
        found = await self.get(call_sid)
        if found is None or found.result:
            return False
        self._items[call_sid] = (replace(found, result=result), self._items[call_sid][1])
        return True


def result_of(status: str, transfer: Transfer) -> str:
    """The transfer's result from Twilio's DialCallStatus and what the person who answered did. A
    declined screen or a voicemail ends the called leg before the bridge, which Twilio may report
    as completed or as no-answer: the choice the whisper saw decides."""
    if status == "canceled":
        return "canceled"
    if transfer.screen and transfer.choice in ("declined", "voicemail"):
        return transfer.choice
    if status in ANSWERED:
        return "connected" if not transfer.screen or transfer.choice == "accepted" else "declined"
    return {"busy": "busy", "failed": "failed"}.get(status, "no_answer")


def return_line(department: str, result: str, opens: str | None = None) -> str:
    """The agent's first words when the caller is back: what happened, and a message offered."""
    if result == "busy":
        what = f"Sorry, the {department} line is busy just now."
    elif result == "failed":
        what = f"Sorry, I couldn't get through to {department} just now."
    elif result == "closed":
        what = f"Sorry, nobody can take your call right now: {department} is closed." + (
            f" It opens {opens}." if opens else ""
        )
    else:
        what = f"Sorry, nobody in {department} could take your call just now."
    return f"{what} {MESSAGE_FOR.format(department=department)}"


# --- TwiML ------------------------------------------------------------------------------------------


def transfer_twiml(settings: Settings, department: Department, call_sid: str, say: str | None = None) -> VoiceResponse:
    """Ring the department: screened (a whisper, press 1), or a plain `<Dial>` for `screen = false`."""
    r = VoiceResponse()
    if say:
        r.say(say)
    query = urlencode({"department": department.name}).encode()
    dial = r.dial(
        action=public_url(settings, DIAL_ACTION_PATH, query),
        method="POST",
        timeout=settings.ring_seconds,
        answer_on_bridge=True,  # the caller hears ringing until the person has taken the call
    )
    if department.screen:
        leg = urlencode({"call": call_sid, "department": department.name}).encode()
        dial.number(
            department.number,
            url=public_url(settings, WHISPER_PATH, leg),
            method="POST",
            machine_detection="Enable",
        )
    else:
        dial.number(department.number)
    return r


def whisper_twiml(settings: Settings, transfer: Transfer, answered_by: str) -> VoiceResponse:
    """What the person who answers hears, on their own leg, before the caller is put through."""
    r = VoiceResponse()
    if answered_by.startswith(("machine", "fax")):
        r.hangup()  # a voicemail is told nothing about the caller
        return r
    query = urlencode({"call": transfer.call_sid, "department": transfer.department}).encode()
    gather = Gather(
        num_digits=1, action=public_url(settings, SCREEN_PATH, query), method="POST", timeout=WHISPER_WAIT_S
    )
    gather.say(announcement(settings, transfer))
    r.append(gather)
    r.hangup()  # no key: declined
    return r


def announcement(settings: Settings, transfer: Transfer) -> str:
    number = caller_number(transfer.caller)
    who = f"{transfer.name}, calling from {spoken_digits(number)}" if transfer.name else (
        f"a caller on {spoken_digits(number)}" if number else "a caller whose number is withheld"
    )  # fmt: skip
    why = f" Their request: {transfer.reason.rstrip('.')}." if transfer.reason else ""
    return (
        f"{settings.company_name} assistant, with a call for {transfer.department} from {who}.{why} "
        "Press 1 to take the call."
    )


def screened_twiml(digit: str) -> VoiceResponse:
    """1 takes the call (empty TwiML: Twilio bridges the two); anything else declines it."""
    r = VoiceResponse()
    if digit != ACCEPT_DIGIT:
        r.hangup()
    return r


def whisper_text(text: str | None, limit: int) -> str:
    """Something the caller said, fit to be read to a colleague: one line, bounded, secrets redacted."""
    return redact(" ".join((text or "").split())[:limit])


def back_redirect(settings: Settings, returned: Returned) -> VoiceResponse:
    """For a REST update: go to the route that brings the call back to the agent (any replica)."""
    r = VoiceResponse()
    query = urlencode({"department": returned.department, "result": returned.result}).encode()
    r.redirect(public_url(settings, BACK_PATH, query), method="POST")
    return r
