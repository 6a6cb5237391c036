"""Twilio placing a call the REST API was asked for (`POST Calls.json`, protocols.md E5), as it does.

The call rings the number; what happens there is the `Callee` set up at it (`FakeTwilioApi.callees`):
busy, a failed line, nobody answering, or an answer by a person, an answering machine (after its
beep, with `MachineDetection=DetectMessageEnd`), a fax, or something detection cannot tell. The
stand-in does not wait the ring time out: no answer is reported at once, so tests need no sleeps.

Status callbacks go to `StatusCallback` (signed) for the events asked for in `StatusCallbackEvent`,
with Twilio's `CallStatus` values: initiated, ringing, in-progress (answered), then completed, busy,
no-answer or failed (sent whether asked for or not, as Twilio sends `completed`). When the call is
answered, Twilio requests `Url` (signed) with `AnsweredBy` when machine detection is on; with
`AsyncAmd=true` it requests `Url` at once without it, and posts `AnsweredBy` to
`AsyncAmdStatusCallback` instead. The TwiML answered is run: a `<Connect><Stream>` opens a media
stream on the call (a `TwilioCaller`, `Placed.leg`); when the server closes it, Twilio requests the
`<Connect action>` and runs what comes back. A REST update of the call during the stream moves it
on to the update's TwiML instead (see `FakeTwilioApi`), and no Connect action is requested.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from app.testing.twilio_caller import TwilioCaller, Webhook

if TYPE_CHECKING:
    from app.testing.fake_twilio_api import FakeTwilioApi

Pickup = Literal["human", "machine", "fax", "unknown", "busy", "no_answer", "fails"]
ANSWERED_BY = {"human": "human", "machine": "machine_end_beep", "fax": "fax", "unknown": "unknown"}
FINAL_STATUS = {"busy": "busy", "no_answer": "no-answer", "fails": "failed"}


@dataclass
class Callee:
    """Whoever is at a number a call is placed to, and what happens when it rings."""

    pickup: Pickup = "human"


@dataclass
class Placed:
    """One call placed through `Calls.json`, as the stand-in ran it, for tests to look at."""

    sid: str
    form: dict[str, str]
    status_events: list[str]
    statuses: list[str] = field(default_factory=list)  # the CallStatus values posted, in order
    answer: Webhook | None = None  # what the server answered to the call's Url
    amd: Webhook | None = None  # what it answered to the AsyncAmdStatusCallback, if any
    leg: TwilioCaller | None = None  # the media stream the TwiML opened, if any
    action: Webhook | None = None  # what the server answered to the Connect action, if any
    done: asyncio.Event = field(default_factory=asyncio.Event)
    received_at: float = field(default_factory=time.time)  # wall clock, when the create request was taken

    @property
    def to(self) -> str:
        return self.form.get("To", "")


async def run(api: FakeTwilioApi, placed: Placed, callee: Callee) -> None:
    """The call, from ringing to its end."""
    assert api.app_url is not None, "set FakeTwilioApi.app_url: where Twilio's requests reach the server"
    form = placed.form
    call = TwilioCaller(
        api.app_url,
        api.app_public_url or api.app_url,
        api.auth_token,
        caller=form.get("From", ""),
        to=form.get("To", ""),
        call_sid=placed.sid,
        account_sid=api.account_sid,
        realtime=api.realtime,
        api=api,
    )
    try:
        await _status(placed, call, "initiated", "initiated")
        await _status(placed, call, "ringing", "ringing")
        if callee.pickup in FINAL_STATUS:
            await _status(placed, call, "completed", FINAL_STATUS[callee.pickup])
            return
        await _status(placed, call, "answered", "in-progress")
        answer = await _answer(placed, call, callee)
        await _follow(api, placed, call, answer)
        if placed.sid not in api.updated:
            await _status(placed, call, "completed", "completed", CallDuration="1")
    finally:
        placed.done.set()
        if placed.leg is None:
            await call.aclose()
        await api.changed()


async def _status(placed: Placed, call: TwilioCaller, event: str, status: str, **extra: str) -> None:
    url = placed.form.get("StatusCallback")
    placed.statuses.append(status)
    if url and (event in placed.status_events or event == "completed"):
        await call.post(url, _call_form(call, status, Direction="outbound-api", **extra))


def _call_form(call: TwilioCaller, status: str, **extra: str) -> dict[str, str]:
    form = call.form(CallStatus=status, **extra)
    form.pop("Caller", None)
    form.pop("Called", None)
    return form


async def _answer(placed: Placed, call: TwilioCaller, callee: Callee) -> Webhook:
    form = placed.form
    detecting = form.get("MachineDetection") in ("Enable", "DetectMessageEnd")
    asynchronous = detecting and form.get("AsyncAmd", "false").lower() == "true"
    fields = {"Direction": "outbound-api"}
    if detecting and not asynchronous:
        fields["AnsweredBy"] = ANSWERED_BY[callee.pickup]
    placed.answer = call.webhook = await call.post(form["Url"], _call_form(call, "in-progress", **fields))
    if asynchronous and form.get("AsyncAmdStatusCallback"):
        amd = _call_form(call, "in-progress", AnsweredBy=ANSWERED_BY[callee.pickup], MachineDetectionDuration="2000")
        placed.amd = await call.post(form["AsyncAmdStatusCallback"], amd)
    return placed.answer


async def _follow(api: FakeTwilioApi, placed: Placed, call: TwilioCaller, hook: Webhook) -> None:
    """Run the answered TwiML: a `<Connect><Stream>` is a media stream until the server closes it
    (then the Connect action), unless a REST update moved the call on first."""
    if hook.stream_url is None:
        return
    leg = placed.leg = call
    await leg.open_stream()
    await leg.connected()
    await leg.start()
    await api.changed()
    await leg.closed.wait()
    if placed.sid in api.updated or leg.hung_up or hook.action_url is None:
        return
    placed.action = await leg.connect_action()
