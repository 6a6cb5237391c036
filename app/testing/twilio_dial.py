"""Twilio running the TwiML a REST update gave a call, as it does (protocols.md E3, E4): a `<Dial>`,
with call screening, or a `<Redirect>`.

`<Dial action timeout><Number url machineDetection>` rings the number; what happens there is the
`Colleague` at that number: busy, a failed line, nobody answering within `timeout` (waited out, so
tests set RING_SECONDS short), a voicemail, or a person. When someone answers and the `<Number>` has
a `url`, Twilio requests it on the called party's own leg (signed, with that leg's CallSid,
ParentCallSid, Direction=outbound-dial, and AnsweredBy when machine detection is on) and plays it to
them: the `<Say>`s are heard, a `<Gather numDigits>` takes the person's key and posts it to its
action, whose TwiML decides: empty, the two are bridged; `<Hangup>`, declined. No key, or a
`<Hangup>` after the gather, declines too. A person who took the call talks for `talk_s` and hangs
up. Then Twilio posts the `<Dial action>` on the caller's call with the real DialCallStatus values
(completed, busy, no-answer, failed), DialCallSid and DialCallDuration, and runs what it answers:
a new `<Connect><Stream>` opens a new media stream on the same call.

`<Redirect>` posts the call's form to the URL and runs the answer the same way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

from app.testing.twilio_caller import TwilioCaller, Webhook, new_sid

Answer = Literal["takes", "declines", "silent", "hangs_up", "no_answer", "busy", "fails", "voicemail"]


@dataclass
class Colleague:
    """Whoever is at a department's number, and what they do when it rings.

    takes: presses 1 and talks; declines: presses 2; silent: answers, presses nothing; hangs_up:
    answers and hangs up during the whisper; no_answer: lets it ring out; busy; fails: the line
    does not connect; voicemail: an answering machine picks up."""

    answers: Answer = "takes"
    talk_s: float = 0.0
    heard: list[str] = field(default_factory=list)  # what the whisper said to them


@dataclass
class Dialled:
    """One `<Dial>` as the stand-in ran it, for tests to look at."""

    number: str
    status: str = ""
    whisper: Webhook | None = None
    key: str | None = None
    action: Webhook | None = None  # what the server answered to the <Dial action>
    action_at: float = 0.0  # time.perf_counter() when the <Dial action> went
    leg: TwilioCaller | None = None  # the new media stream it opened, if any


async def run(caller: TwilioCaller, hook: Webhook, colleague: Colleague) -> Dialled:
    """Run a REST update's `<Dial>` on the caller's call; returns what happened."""
    number = hook.dialled[0]
    dialled = Dialled(number)
    timeout = float(hook.dial.get("timeout", "30"))
    child = new_sid("CA")
    duration = 0
    if colleague.answers == "busy":
        dialled.status = "busy"
    elif colleague.answers == "fails":
        dialled.status = "failed"
    elif colleague.answers == "no_answer":
        await asyncio.sleep(timeout)  # it rings out
        dialled.status = "no-answer"
    else:
        bridged = await _answered(caller, hook, colleague, child, dialled)
        dialled.status = "completed"
        if bridged:
            await asyncio.sleep(colleague.talk_s)
            duration = max(1, round(colleague.talk_s))
    action = hook.dial.get("action")
    if action:
        form = caller.form(
            CallStatus="in-progress", DialCallStatus=dialled.status, DialCallSid=child, DialCallDuration=str(duration)
        )
        dialled.action_at = time.perf_counter()
        dialled.action = await caller.post(action, form)
        dialled.leg = await follow(caller, dialled.action)
    return dialled


async def _answered(caller: TwilioCaller, hook: Webhook, colleague: Colleague, child: str, dialled: Dialled) -> bool:
    """Someone picked up: the whisper on their leg, if there is one. True when the two are bridged."""
    url = hook.number.get("url")
    if not url:
        return colleague.answers != "voicemail"  # a plain dial is connected to whatever answers
    form = {
        "CallSid": child,
        "ParentCallSid": caller.call_sid,
        "AccountSid": caller.account_sid,
        "From": caller.caller,
        "To": dialled.number,
        "CallStatus": "in-progress",
        "Direction": "outbound-dial",
        "ApiVersion": "2010-04-01",
    }
    detection = hook.number.get("machineDetection")
    if detection:  # Enable answers at the greeting's start; DetectMessageEnd waits for the beep
        machine = "machine_start" if detection == "Enable" else "machine_end_beep"
        form["AnsweredBy"] = machine if colleague.answers == "voicemail" else "human"
    whisper = dialled.whisper = await caller.post(url, form)
    colleague.heard += whisper.said
    if colleague.answers in ("voicemail", "silent", "hangs_up") or not whisper.gather:
        return False  # no key: the gather runs out and the whisper's <Hangup> (or the person's) ends it
    dialled.key = "1" if colleague.answers == "takes" else "2"
    pressed = await caller.post(whisper.gather["action"], {**form, "Digits": dialled.key})
    return "Hangup" not in pressed.verbs


async def follow(caller: TwilioCaller, hook: Webhook) -> TwilioCaller | None:
    """Run TwiML the server answered on the call: a `<Redirect>` is posted, and a `<Connect><Stream>`
    becomes a new media stream (returned, open and started)."""
    for _ in range(5):  # a redirect that redirects again, within reason
        if hook.redirect_url is None:
            break
        hook = await caller.post(hook.redirect_url, caller.form(CallStatus="in-progress"))
    if hook.stream_url is None:
        return None
    leg = caller.next_leg(hook)
    await leg.open_stream()
    await leg.connected()
    await leg.start()
    return leg
