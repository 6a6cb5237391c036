"""Placing call-backs: every replica looks for due ones, takes each try by a lease, checks the rules
again at the moment of dialling, and asks Twilio's REST API for the call (protocols.md E5).

The call goes from TWILIO_PHONE_NUMBER to the message's number with answering-machine detection
that waits for the end of a greeting (`MachineDetection=DetectMessageEnd`), so the TwiML request
Twilio makes when the call is answered carries `AnsweredBy` (human, machine_end_beep, fax, unknown,
...) and a voicemail starts after the beep. Twilio's status callbacks say how a try that nobody
answered went (busy, no-answer, failed), and where each try's call is, which `routes` reads.

A try holds an admission slot from before it is placed until it is answered (then the call's own
slot) or not, so outbound calls count toward MAX_CONCURRENT_CALLS, across replicas too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from twilio.http.async_http_client import AsyncTwilioHttpClient

from app.callbacks import rules
from app.callbacks.store import DO_NOT_CALL, NOT_CALLABLE, SCHEDULED, CallbackStore, Plan, Taken
from app.calls.admission import Admission
from app.clock import Clock
from app.departments.directory import Directory
from app.observability import Metrics, mask_digits, one_line
from app.settings import Settings
from app.telephony.signatures import public_url
from app.telephony.twilio_rest import REST_TIMEOUT_S, rest_client

log = logging.getLogger("switchboard.callbacks")

ANSWER_PATH = "/callback/answer"
STATUS_PATH = "/callback/status"
RING_S = 30  # how long a call-back rings before Twilio gives up (no answer)
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


def slot_key(callback_id: int, attempt: int) -> str:
    """The admission slot a try holds until it is answered (or not)."""
    return f"callback-{callback_id}-{attempt}"


def try_query(callback_id: int, attempt: int) -> bytes:
    return urlencode({"callback": callback_id, "attempt": attempt}).encode()


class Planner:
    """The rules with this app's settings, departments and clock."""

    def __init__(self, settings: Settings, directory: Directory) -> None:
        self.settings = settings
        self.directory = directory

    def plan(self, number: str, department: str | None, after: datetime) -> Plan:
        why = rules.why_not_callable(number)
        if why is not None:
            return Plan(NOT_CALLABLE, detail=why)
        due = self.next_allowed(number, department, after)
        if due is None:
            what = f"the callee's calling hours and {department}'s opening hours" if department else "calling hours"
            return Plan(NOT_CALLABLE, detail=f"no time within {rules.HORIZON_DAYS} days fits {what}")
        return Plan(SCHEDULED, due)

    def next_allowed(self, number: str, department: str | None, after: datetime) -> datetime | None:
        found = self.directory.get(department) if department else None
        return rules.next_allowed(number, self.settings.callback_window, found, after)


@dataclass(frozen=True)
class DialerTimings:
    poll: float = 2.0  # how soon a call-back another replica scheduled, or one that came due, is seen
    store_timeout: float = 10.0


class Dialer:
    """The task of one replica that places the call-backs that are due."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: CallbackStore,
        planner: Planner,
        clock: Clock,
        slots: Admission,
        ready: asyncio.Event,
        timings: DialerTimings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.planner = planner
        self.clock = clock
        self.slots = slots
        self.ready = ready
        self.timings = timings or DialerTimings()
        # A try's lease outlasts the bounded create request, so no other replica takes it meanwhile;
        # a replica that dies holding it frees it within CALL_LEASE_SECONDS (or that bound).
        self.lease = timedelta(seconds=max(settings.call_lease_seconds, REST_TIMEOUT_S + 5))
        self.passes = 0  # rounds done: tests wait for one to pass instead of for time to
        self._woken = asyncio.Event()
        self._passed = asyncio.Condition()
        self._http: AsyncTwilioHttpClient | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        """Calls can be placed: REST credentials, a number to call from, and a public URL for Twilio."""
        s = self.settings
        return bool(s.twilio_account_sid and s.twilio_auth_token and s.twilio_phone_number and s.public_url)

    def start(self) -> None:
        if not self.configured:
            log.info(
                "call-backs are off: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER and PUBLIC_URL"
            )
            return
        self._http = AsyncTwilioHttpClient(timeout=REST_TIMEOUT_S)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="callback-dialer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()

    def wake(self) -> None:
        """Look now (a call-back was scheduled here, or the clock was set)."""
        self._woken.set()

    async def passed(self, timeout: float = 10.0) -> None:
        """Until a whole round has run after this call (tests: "not dialled yet" without sleeping)."""
        async with asyncio.timeout(timeout), self._passed:
            target = self.passes + 2  # the round under way may have started before the change
            self.wake()
            await self._passed.wait_for(lambda: self.passes >= target)

    async def _run(self) -> None:
        await self.ready.wait()
        while True:
            self._woken.clear()
            try:
                async with asyncio.timeout(self.timings.store_timeout):
                    due = await self.store.due(self.clock.now())
                for callback in due:
                    await self._try(callback.id, callback.number)
                wait = await self._until_next()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: look again next round
                log.warning("call-backs not looked at: %s", one_line(exc))
                wait = self.timings.poll
            async with self._passed:
                self.passes += 1
                self._passed.notify_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._woken.wait()

    async def _until_next(self) -> float:
        """Seconds to the next scheduled try (so it is placed on time), at most `poll` (another
        replica may schedule one sooner). One that came due during this round is looked at at once:
        every due one a round finds leaves the schedule (placed, given a later time, or closed)."""
        async with asyncio.timeout(self.timings.store_timeout):
            next_due = await self.store.next_due()
        if next_due is None:
            return self.timings.poll
        return min(self.timings.poll, max((next_due - self.clock.now()).total_seconds(), 0.0))

    async def _try(self, callback_id: int, number: str) -> None:
        now = self.clock.now()
        if await self.store.listed(number):
            await self.store.close(callback_id, DO_NOT_CALL, now)
            return
        taken = await self.store.take(callback_id, now, self.lease)
        if taken is None:
            return  # another replica has it
        # The rules again, now: the department's hours or the do-not-call list may have changed.
        plan = self.planner.plan(number, taken.department, now)
        if plan.state != SCHEDULED or plan.due_at != now:
            await self._not_now(taken, plan, now)
            return
        key = slot_key(callback_id, taken.callback.attempts)
        if not await self.slots.reserve(key):
            log.info("call-back %d waits for a free line", callback_id)
            await self._not_now(taken, Plan(SCHEDULED, now + timedelta(minutes=1)), now)
            return
        await self._place(taken, key)

    async def _not_now(self, taken: Taken, plan: Plan, now: datetime) -> None:
        """Give the try back: later (its count undone), or never, with why."""
        if plan.state == SCHEDULED and plan.due_at is not None:
            await self.store.release(taken, plan.due_at)
        else:
            await self.store.close(taken.callback.id, plan.state, now, plan.detail)

    async def _place(self, taken: Taken, key: str) -> None:
        callback = taken.callback
        settings = self.settings
        assert self._http is not None
        query = try_query(callback.id, callback.attempts)
        extra = {"callback": callback.id, "attempt": callback.attempts, "callee": mask_digits(callback.number)}
        client = rest_client(settings, self._http)
        try:
            async with asyncio.timeout(REST_TIMEOUT_S):
                call = await client.calls.create_async(
                    to=callback.number,
                    from_=settings.twilio_phone_number,
                    url=public_url(settings, ANSWER_PATH, query),
                    method="POST",
                    status_callback=public_url(settings, STATUS_PATH, query),
                    status_callback_method="POST",
                    status_callback_event=STATUS_EVENTS,
                    machine_detection="DetectMessageEnd",
                    timeout=RING_S,
                )
        except Exception as exc:
            await self.slots.release(key)
            self.metrics.call_actions.labels("callback", "failed").inc()
            status = getattr(exc, "status", None)
            log.error(
                "call-back not placed: %s%s", type(exc).__name__, f" (HTTP {status})" if status else "", extra=extra
            )
            await self.tried(callback.id, callback.attempts, "failed")
            return
        await self.store.placed(taken, call.sid, self.clock.now())
        self.metrics.call_actions.labels("callback", "placed").inc()
        log.info("call-back placed", extra={**extra, "call_sid": call.sid})

    async def tried(self, callback_id: int, attempt: int, result: str) -> None:
        """A try nobody answered: the next at least CALLBACK_RETRY_MINUTES later and when the rules
        allow, or no answer once CALLBACK_ATTEMPTS tries are used up."""
        target = await self.store.target(callback_id)
        if target is None:
            return
        now = self.clock.now()
        after = now + timedelta(minutes=self.settings.callback_retry_minutes)
        next_at = self.planner.next_allowed(target.number, target.department, after)
        state = await self.store.unanswered(callback_id, attempt, result, next_at, self.settings.callback_attempts, now)
        if state is not None:
            log.info("call-back %d try %d: %s; now %s", callback_id, attempt, result, state)
