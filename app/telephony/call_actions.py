"""Acting on a live call through Twilio's REST API: redirect it to ring a department, or back to the
agent on a new stream.

Redirecting a call abandons its `<Connect><Stream>` (Twilio sends `stop` and closes the stream) and
runs the new TwiML; the stream, when this process holds it, is told first why it will stop. What
happens once the dial is over is the `<Dial action>`'s business (`app.telephony.handoff`).
The numbers only ever come from the departments; nothing a caller or the model says reaches them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.twiml.voice_response import VoiceResponse

from app.calls.control import CallControl, EndReason, Returned
from app.calls.registry import CallAction
from app.calls.shared import COMMAND_TIMEOUT_S
from app.departments.directory import Directory
from app.observability import Metrics, mask_digits
from app.settings import Settings
from app.telephony.state import bounded
from app.telephony.transfers import ANSWERED, Transfer, Transfers, back_redirect, transfer_twiml, whisper_text
from app.telephony.twilio_rest import REST_TIMEOUT_S, rest_client

log = logging.getLogger("switchboard.call_actions")

DIAL_TIMEOUT_S = 25  # ringing before Twilio gives up on FALLBACK_NUMBER
MAX_REASON_CHARS = 200
MAX_NAME_CHARS = 60


def after_dial_twiml(settings: Settings, status: str) -> VoiceResponse:
    """What the caller gets once a dial this server knows nothing of is over (no transfer of ours, or
    its record lost): hang up if someone answered, else FALLBACK_NUMBER or an apology. Never silence."""
    r = VoiceResponse()
    if status in ANSWERED:
        r.hangup()
        return r
    if settings.fallback_number:
        r.say("Sorry, nobody could take your call. Let me try another colleague.")
        r.dial(settings.fallback_number, timeout=DIAL_TIMEOUT_S)
    else:
        r.say("Sorry, nobody could take your call right now. Please call again a little later. Goodbye.")
    r.hangup()
    return r


def drained_twiml(settings: Settings) -> VoiceResponse:
    """The server is stopping and DRAIN_SECONDS ran out: a short goodbye, or a person if there is one."""
    r = VoiceResponse()
    if settings.fallback_number:
        r.say("I'm sorry, I have to end our call here. Let me put you through to a member of our team.")
        r.dial(settings.fallback_number, timeout=DIAL_TIMEOUT_S)
    else:
        r.say(f"I'm sorry, I have to end our call here. Thank you for calling {settings.company_name}. Goodbye.")
    r.hangup()
    return r


class CallActions:
    """Twilio REST actions, with one async HTTP client opened before serving and closed after."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        directory: Directory,
        transfer_records: Transfers,
        calls: Mapping[str, CallControl] | None = None,
        timeout: float = REST_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.directory = directory
        self.transfer_records = transfer_records
        self.calls: Mapping[str, CallControl] = calls if calls is not None else {}  # the streams held here
        self.timeout = timeout
        self._http: AsyncTwilioHttpClient | None = None

    @property
    def transfers(self) -> bool:
        """A transfer needs REST credentials, a public URL for the dial's action, and somewhere to go."""
        return self.rest and bool(self.settings.public_url) and bool(self.directory.departments)

    @property
    def rest(self) -> bool:
        """Twilio's REST API can be reached: live calls can be redirected."""
        return bool(self.settings.twilio_account_sid and self.settings.twilio_auth_token is not None)

    async def start(self) -> None:
        if self.rest:
            self._http = AsyncTwilioHttpClient(timeout=self.timeout)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def redirect(self, call_sid: str, twiml: VoiceResponse, what: str, ending: EndReason) -> bool:
        """Replace what the live call is doing with `twiml`; its stream then ends as `ending`. True
        when Twilio accepted it."""
        if self._http is None:
            self.metrics.call_actions.labels(what, "unavailable").inc()
            return False
        client = rest_client(self.settings, self._http)
        stream = self.calls.get(call_sid)
        if stream is not None:
            stream.redirecting(ending)
        try:
            async with asyncio.timeout(self.timeout):
                await client.calls(call_sid).update_async(twiml=str(twiml))
        except Exception as exc:
            if stream is not None:
                stream.redirecting(None)
            status = getattr(exc, "status", None)
            self.metrics.call_actions.labels(what, "failed").inc()
            log.error(
                "%s failed: %s%s", what, type(exc).__name__, f" (HTTP {status})" if status else "",
                extra={"call_sid": call_sid},
            )  # fmt: skip
            return False
        self.metrics.call_actions.labels(what, "redirected").inc()
        return True

    async def transfer(self, call_sid: str, caller: str, action: CallAction) -> bool:
        """Redirect the live call to ring the department (a warm transfer where it screens), once what
        the whisper needs is recorded. True when Twilio accepted it."""
        department = self.directory.get(action.department or "")
        if not self.transfers or department is None:
            self.metrics.call_actions.labels("transfer", "unavailable").inc()
            return False
        record = Transfer(
            call_sid,
            department.name,
            caller,
            department.screen,
            reason=whisper_text(action.reason, MAX_REASON_CHARS),
            name=whisper_text(action.name, MAX_NAME_CHARS),
        )
        extra = {"call_sid": call_sid}
        if not await bounded(self._begin(record), COMMAND_TIMEOUT_S, False, "transfer not recorded", log, extra):
            # Without its record no whisper could say who is calling, nor the dial action what came of it.
            self.metrics.call_actions.labels("transfer", "unavailable").inc()
            return False
        twiml = transfer_twiml(self.settings, department, call_sid, action.say)
        if not await self.redirect(call_sid, twiml, "transfer", EndReason.TRANSFERRED):
            return False
        screened = "screened" if department.screen else "unscreened"
        log.info(
            "call redirected to %s (%s, %s)", department.name, mask_digits(department.number), screened, extra=extra
        )
        return True

    async def _begin(self, record: Transfer) -> bool:
        await self.transfer_records.begin(record)
        return True

    async def back_to_agent(self, call_sid: str, department: str, result: str) -> bool:
        """Take the call off its stream and back to the agent on a new one, which opens saying why."""
        twiml = back_redirect(self.settings, Returned(department, result))
        return await self.redirect(call_sid, twiml, "back", EndReason.TRANSFERRED)
