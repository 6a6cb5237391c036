"""Deploys drop no call: on SIGTERM a replica drains.

It turns unready at once (`/readyz` 503, and it leaves Redis's list of replicas taking calls), so
the load balancer stops sending it new work; a webhook that still arrives is handed to another
replica or turned away (`app.telephony.webhook`). Everything that belongs to a call already taken
goes on: media streams, brain connections, Connect actions. When the last call this replica holds
has ended, it stops. If DRAIN_SECONDS run out first, each remaining caller hears a short goodbye
(or is put through to FALLBACK_NUMBER) before the line closes: Twilio's REST API replaces the
call's TwiML when it can, else the stream ends as DRAINED and the Connect action says goodbye.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from app.calls.control import EndReason
from app.telephony.call_actions import drained_twiml

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger("switchboard.drain")

POLL_S = 0.2
GOODBYE_S = 20.0  # after the goodbye, how long the calls get to end
CONNECT_ACTION_GRACE_S = 2.0  # Twilio posts the Connect action just after a stream ends


class Drain:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.draining = False
        self.finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Start draining (idempotent); `finished` is set when the replica may stop."""
        if self.draining:
            return
        self.draining = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    async def _run(self) -> None:
        svc = self.services
        calls = svc.telephony.calls
        seconds = svc.settings.drain_seconds
        log.info("draining: %d live call(s), up to %.0f s", len(calls), seconds)
        if svc.shared is not None:
            with contextlib.suppress(Exception):
                await svc.shared.stop_taking_calls()
        if calls and not await self._ended(seconds):
            log.warning("DRAIN_SECONDS ran out with %d live call(s): saying goodbye", len(calls))
            await asyncio.gather(*(self._goodbye(sid) for sid in list(calls)))
            if not await self._ended(GOODBYE_S):
                log.error("%d call(s) still live after the goodbye; closing them", len(calls))
                for control in list(calls.values()):
                    control.end(EndReason.DRAINED)
        await asyncio.sleep(CONNECT_ACTION_GRACE_S)
        log.info("drained")
        self.finished.set()

    async def _ended(self, seconds: float) -> bool:
        """True once no call is live here, within `seconds`."""
        calls = self.services.telephony.calls
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while calls:  # noqa: ASYNC110 - a handful of checks a second, only while draining
                    await asyncio.sleep(POLL_S)
        return not calls

    async def _goodbye(self, call_sid: str) -> None:
        svc = self.services
        control = svc.telephony.calls.get(call_sid)
        if control is None:
            return
        twiml = drained_twiml(svc.settings)
        if not (svc.call_actions.rest and await svc.call_actions.redirect(call_sid, twiml, "drain", EndReason.DRAINED)):
            control.end(EndReason.DRAINED)  # the Connect action says the goodbye instead

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
