"""Acting on a live call through Twilio's REST API: redirect it to `<Dial>` a configured number.

Redirecting a call abandons its `<Connect><Stream>` (Twilio sends `stop` and closes the stream) and
runs the new TwiML; the stream, when this process holds it, is told first why it will stop. The
`<Dial action>` route then decides what happens after the dial: hang up when the colleague
answered, otherwise FALLBACK_NUMBER semantics (try it once, or apologise and hang up).
The numbers only ever come from settings; nothing a caller or the model says reaches this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import urlencode

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.twiml.voice_response import VoiceResponse

from app.calls.control import CallControl, EndReason
from app.observability import Metrics, mask_digits
from app.settings import Settings
from app.telephony.signatures import public_url
from app.telephony.twilio_rest import REST_TIMEOUT_S, rest_client

log = logging.getLogger("switchboard.call_actions")

DIAL_ACTION_PATH = "/dial-action"
DIAL_TIMEOUT_S = 25  # ringing before Twilio gives up on the colleague's phone
ANSWERED = frozenset({"completed", "answered"})


def transfers_configured(settings: Settings) -> bool:
    """A transfer needs REST credentials, a public URL for the dial's action, and somewhere to go."""
    return bool(
        settings.twilio_account_sid
        and settings.twilio_auth_token is not None
        and settings.public_url
        and settings.transfer_targets
    )


def transfer_twiml(settings: Settings, department: str, say: str | None = None) -> VoiceResponse:
    """`<Dial action=...>number</Dial>` for a configured department (KeyError for any other)."""
    number = settings.transfer_targets[department]
    r = VoiceResponse()
    if say:
        r.say(say)
    action = public_url(settings, DIAL_ACTION_PATH, urlencode({"department": department}).encode())
    r.dial(number, action=action, method="POST", timeout=DIAL_TIMEOUT_S)
    return r


def after_dial_twiml(settings: Settings, status: str, department: str | None) -> VoiceResponse:
    """What the caller gets once the transfer's dial is over. Never silence, never a loop."""
    r = VoiceResponse()
    if status in ANSWERED:
        r.hangup()
        return r
    tried = settings.transfer_targets.get(department or "")
    if settings.fallback_number and settings.fallback_number != tried:
        r.say("Sorry, nobody in that team could take your call. Let me try another colleague.")
        r.dial(settings.fallback_number, timeout=DIAL_TIMEOUT_S)
        r.hangup()
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
        calls: Mapping[str, CallControl] | None = None,
        timeout: float = REST_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.calls: Mapping[str, CallControl] = calls if calls is not None else {}  # the streams held here
        self.timeout = timeout
        self._http: AsyncTwilioHttpClient | None = None

    @property
    def transfers(self) -> bool:
        return transfers_configured(self.settings)

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

    async def transfer(self, call_sid: str, department: str, say: str | None = None) -> bool:
        """Redirect the live call to dial the department's number. True when Twilio accepted it."""
        if not self.transfers or department not in self.settings.transfer_targets:
            self.metrics.call_actions.labels("transfer", "unavailable").inc()
            return False
        twiml = transfer_twiml(self.settings, department, say)
        if not await self.redirect(call_sid, twiml, "transfer", EndReason.TRANSFERRED):
            return False
        number = self.settings.transfer_targets[department]
        log.info("call redirected to %s (%s)", department, mask_digits(number), extra={"call_sid": call_sid})
        return True
