"""A stand-in for Twilio's REST API: the IncomingPhoneNumbers `make configure` reads and updates, and
call updates (redirects, hang-ups), recorded for tests. The twilio client reaches it through
`TWILIO_API_BASE_URL`. Basic auth with the account SID and auth token, as Twilio checks it.

Like Twilio, an update of a call whose media stream is open (a `TwilioCaller` given this API) ends
that stream: the new TwiML replaces the `<Connect><Stream>`, so Twilio sends `stop` and closes the
socket. That happens before the REST answer goes back, the order that tests the product hardest.
Then the new TwiML runs (`twilio_dial`): a `<Dial>` to a number with a `Colleague` set up at it
(`colleagues`) rings them, with call screening, and posts the `<Dial action>`; a `<Redirect>` is
followed. A `<Connect><Stream>` that comes of either opens a new media stream on the call
(`leg(call_sid)`). A number with nobody set up at it is left ringing: the test plays that part.

Calls placed through `Calls.json` (To, From, Url, StatusCallback, StatusCallbackEvent,
MachineDetection, AsyncAmd, AsyncAmdStatusCallback, Timeout) are run as Twilio runs them
(`twilio_outbound`): the `Callee` at the number (`callees`; a list is used one per call, the last
one kept) answers or not, and Twilio's requests reach the server at `app_url` signed for
`app_public_url`. `hold_creates` keeps each create request waiting until it is set; with
`refusing_held` it then fails as a request that never reached Twilio (a server killed while it
waited never placed the call).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from quart import Quart, request

from app.testing import twilio_dial, twilio_outbound
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import TwilioCaller, Webhook, new_sid
from app.testing.twilio_dial import Colleague, Dialled
from app.testing.twilio_outbound import Callee, Placed

log = logging.getLogger("switchboard.testing")

_FIELDS = {
    "VoiceUrl": "voice_url",
    "VoiceMethod": "voice_method",
    "VoiceFallbackUrl": "voice_fallback_url",
    "VoiceFallbackMethod": "voice_fallback_method",
    "StatusCallback": "status_callback",
    "FriendlyName": "friendly_name",
}


@dataclass(frozen=True)
class TwilioError:
    """An error answer of Twilio's REST API (its JSON, and the HTTP status it comes with)."""

    status: int
    code: int
    message: str

    def body(self) -> dict[str, Any]:
        more_info = f"https://www.twilio.com/docs/errors/{self.code}"
        return {"code": self.code, "message": self.message, "more_info": more_info, "status": self.status}


CALL_NOT_IN_PROGRESS = TwilioError(400, 21220, "Call is not in-progress. Cannot redirect.")


class FakeTwilioApi:
    def __init__(self, account_sid: str, auth_token: str, numbers: list[str] | None = None) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.numbers: dict[str, dict[str, Any]] = {}
        for number in numbers or []:
            self.add_number(number)
        self.number_updates: list[dict[str, str]] = []
        self.call_updates: list[tuple[str, dict[str, str]]] = []
        # Set to refuse call updates as Twilio does, e.g. 21220 for a call no longer in progress.
        self.refusing: TwilioError | None = None
        self.refused_updates: list[tuple[str, dict[str, str]]] = []
        self.on_call_update: Callable[[str, dict[str, str]], None] | None = None
        self.streams: dict[str, TwilioCaller] = {}  # calls' media streams, by call SID (see TwilioCaller)
        self.colleagues: dict[str, Colleague] = {}  # who answers a dialled number, and how
        self.dials: list[Dialled] = []  # the <Dial>s run, once each is over
        self.legs: dict[str, list[TwilioCaller]] = {}  # new media streams opened on a call, in order
        self.on_leg: Callable[[TwilioCaller], None] | None = None
        # Outbound calls (Calls.json): who is at each number, the calls placed, and where the server is.
        self.callees: dict[str, Callee | list[Callee]] = {}
        self.placed: list[Placed] = []
        self.creates_seen = 0  # create requests received, placed or not
        self.hold_creates: asyncio.Event | None = None
        self.refusing_held = False  # a held create then fails as if it never reached Twilio
        self.updated: set[str] = set()  # calls a REST update moved off their stream
        self.app_url: str | None = None
        self.app_public_url: str | None = None
        self.realtime = False
        self._changed = asyncio.Condition()
        self._runs: set[asyncio.Task[None]] = set()
        self._server: LiveServer | None = None

    def add_number(self, number: str, **fields: Any) -> dict[str, Any]:
        sid = "PN" + secrets.token_hex(16)
        record = {
            "sid": sid,
            "account_sid": self.account_sid,
            "phone_number": number,
            "friendly_name": number,
            "voice_url": "https://demo.twilio.com/welcome/voice/",
            "voice_method": "POST",
            "voice_fallback_url": None,
            "voice_fallback_method": "POST",
            "status_callback": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json",
            **fields,
        }
        self.numbers[sid] = record
        return record

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return self._server.http_url

    async def __aenter__(self) -> FakeTwilioApi:
        self._server = LiveServer(self._app())
        await self._server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        for legs in self.legs.values():
            for leg in legs:
                await leg.aclose()
        for placed in self.placed:
            if placed.leg is not None:
                await placed.leg.aclose()
        if self._server is not None:
            await self._server.__aexit__(*exc)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Until `predicate()` holds about the dials and legs (checked whenever one changes)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _callee(self, number: str) -> Callee:
        found = self.callees.get(number, Callee())
        if isinstance(found, list):
            return found.pop(0) if len(found) > 1 else found[0]
        return found

    async def placed_call(self, n: int = 0, timeout: float = 20.0) -> Placed:
        """The n-th call placed through Calls.json."""
        await self.wait_for(lambda: len(self.placed) > n, timeout)
        return self.placed[n]

    async def leg(self, call_sid: str, n: int = 0, timeout: float = 20.0) -> TwilioCaller:
        """The n-th new media stream opened on the call (a call back from a transfer)."""
        await self.wait_for(lambda: len(self.legs.get(call_sid, [])) > n, timeout)
        return self.legs[call_sid][n]

    def _run(self, stream: TwilioCaller, form: dict[str, str]) -> None:
        """What Twilio does with the update's TwiML once the stream has left it."""
        twiml = form.get("Twiml")
        if not twiml:
            return
        hook = Webhook.parse(200, twiml)
        work: Coroutine[Any, Any, None] | None = None
        if hook.dialled and hook.dialled[0] in self.colleagues:
            work = self._dial(stream, hook, self.colleagues[hook.dialled[0]])
        elif hook.redirect_url is not None:
            work = self._follow(stream, hook)
        if work is not None:
            task = asyncio.get_running_loop().create_task(self._logged(work), name=f"twilio-runs-{stream.call_sid}")
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _logged(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            log.exception("the Twilio stand-in could not run a call's new TwiML")

    async def _dial(self, stream: TwilioCaller, hook: Webhook, colleague: Colleague) -> None:
        dialled = await twilio_dial.run(stream, hook, colleague)
        await self._opened(stream, dialled.leg)
        async with self._changed:
            self.dials.append(dialled)
            self._changed.notify_all()

    async def _follow(self, stream: TwilioCaller, hook: Webhook) -> None:
        await self._opened(stream, await twilio_dial.follow(stream, hook))

    async def _opened(self, stream: TwilioCaller, leg: TwilioCaller | None) -> None:
        if leg is None:
            return
        self.streams[stream.call_sid] = leg
        if self.on_leg is not None:
            self.on_leg(leg)
        async with self._changed:
            self.legs.setdefault(stream.call_sid, []).append(leg)
            self._changed.notify_all()

    def _authorised(self) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return hmac.compare_digest(request.headers.get("Authorization", ""), f"Basic {expected}")

    def _app(self) -> Quart:
        app = Quart("fake_twilio_api")
        prefix = "/2010-04-01/Accounts/<account>"
        unauthorised = {"code": 20003, "message": "Authenticate", "status": 401}

        @app.get("/healthz")
        async def healthz() -> tuple[str, int]:
            return "ok", 200

        @app.get(f"{prefix}/IncomingPhoneNumbers.json")
        async def list_numbers(account: str) -> tuple[dict[str, Any], int]:
            if not self._authorised() or account != self.account_sid:
                return unauthorised, 401
            wanted = request.args.get("PhoneNumber")
            found = [n for n in self.numbers.values() if wanted is None or n["phone_number"] == wanted]
            uri = f"/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json"
            return {
                "incoming_phone_numbers": found,
                "end": max(len(found) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": 50,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }, 200

        @app.post(f"{prefix}/IncomingPhoneNumbers/<sid>.json")
        async def update_number(account: str, sid: str) -> tuple[dict[str, Any], int]:
            if not self._authorised() or account != self.account_sid:
                return unauthorised, 401
            if sid not in self.numbers:
                return {"code": 20404, "message": "not found", "status": 404}, 404
            form = dict(await request.form)
            self.number_updates.append(form)
            for name, value in form.items():
                if name in _FIELDS:
                    self.numbers[sid][_FIELDS[name]] = value
            return self.numbers[sid], 200

        @app.post(f"{prefix}/Calls/<sid>.json")
        async def update_call(account: str, sid: str) -> tuple[dict[str, Any], int]:
            if not self._authorised() or account != self.account_sid:
                return unauthorised, 401
            form = dict(await request.form)
            if self.refusing is not None:
                self.refused_updates.append((sid, form))
                return self.refusing.body(), self.refusing.status
            self.call_updates.append((sid, form))
            if self.on_call_update is not None:
                self.on_call_update(sid, form)
            stream = self.streams.get(sid)
            if stream is not None and stream.streaming:
                self.updated.add(sid)
                await stream.hang_up()  # the call leaves its <Connect><Stream>
                self._run(stream, form)
            return {"sid": sid, "account_sid": account, "status": form.get("Status", "in-progress")}, 200

        @app.post(f"{prefix}/Calls.json")
        async def create_call(account: str) -> tuple[dict[str, Any], int]:
            if not self._authorised() or account != self.account_sid:
                return unauthorised, 401
            self.creates_seen += 1
            await self.changed()
            if self.hold_creates is not None:
                await self.hold_creates.wait()
                if self.refusing_held:
                    return TwilioError(503, 20500, "Service unavailable").body(), 503
            posted = await request.form
            form = {name: posted.get(name, "") for name in posted}
            for name, code in (("To", 21201), ("From", 21603), ("Url", 21205)):
                if not form.get(name):
                    return TwilioError(400, code, f"A '{name}' phone number or URL is required.").body(), 400
            placed = Placed(new_sid("CA"), form, posted.getlist("StatusCallbackEvent"))
            self.placed.append(placed)
            run = asyncio.get_running_loop().create_task(
                self._logged(twilio_outbound.run(self, placed, self._callee(form["To"]))),
                name=f"twilio-outbound-{placed.sid}",
            )
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
            return {
                "sid": placed.sid,
                "account_sid": account,
                "to": form["To"],
                "from": form["From"],
                "status": "queued",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{account}/Calls/{placed.sid}.json",
            }, 201

        return app
