"""The delivery task of one replica: sends the outbox, each destination on its own, oldest event first.

A destination's worker leases its oldest pending event, sends it (bounded in time), and records the
outcome: delivered on 2xx, else retried with exponential backoff and jitter until a day after the
event was made, then dead (shown on the review page, with "send again"). Events behind a failing
one wait their turn, so a receiver sees them in order. The task runs beside the calls and never
waits on them, nor they on it: a slow receiver holds up only its own destination.

Events this replica commits wake its workers at once; other replicas' are found within `poll`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app.notify import events
from app.notify.senders import Senders
from app.observability import Metrics, one_line
from app.records.outbox import CALL_ENDED, Destination, Leased, Outbox, fill_data, lease_next, settle
from app.settings import Settings

log = logging.getLogger("switchboard.notify")


@dataclass(frozen=True)
class DeliveryTimings:
    send_timeout: float = 10.0  # one webhook request, all of it
    mail_timeout: float = 30.0  # one e-mail: connect, STARTTLS, log in, send
    lease: float = 45.0  # outlasts any send, so no other worker takes an event while it is in flight
    poll: float = 1.0  # how soon another replica's events are noticed
    first_retry: float = 2.0
    max_retry: float = 3600.0  # 2 s doubling to an hour: about 35 tries in the day an event is retried
    store_timeout: float = 10.0


def notify_status(settings: Settings) -> list[str]:
    """One line for each notification that is configured but off, for start-up."""
    lines = []
    if settings.notify_webhook_url and settings.notify_webhook_secret is None:
        lines.append("webhooks are off: NOTIFY_WEBHOOK_URL is set, NOTIFY_WEBHOOK_SECRET is not (none go unsigned)")
    if bool(settings.notify_email_to) != (settings.smtp_url is not None):
        lines.append("e-mail for messages is off: set both NOTIFY_EMAIL_TO and SMTP_URL")
    return lines


class Clock:
    """The delivery task's time: now, and waiting until an event is committed or some seconds have
    passed. Tests hand in one that jumps to the next try instead of waiting for it."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def wait(self, woken: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await woken.wait()


def retry_delay(attempt: int, timings: DeliveryTimings) -> float:
    """Seconds before try `attempt + 1`: doubling from `first_retry` up to `max_retry`, ±20 % jitter so
    replicas and destinations that failed together do not retry together."""
    base = min(timings.first_retry * 2 ** min(attempt - 1, 30), timings.max_retry)
    return base * random.uniform(0.8, 1.2)


class Delivery:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine: AsyncEngine,
        outbox: Outbox,
        ready: asyncio.Event,
        timings: DeliveryTimings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.metrics = metrics
        self.engine = engine
        self.outbox = outbox
        self.ready = ready
        self.timings = timings or DeliveryTimings()
        self.clock = clock or Clock()
        self.senders = Senders(settings)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.outbox.destinations:
            shown = ", ".join(d.shown for d in self.outbox.destinations)
            log.info("events are sent to %s", shown)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="notify-delivery")

    async def stop(self) -> None:
        """Stop at once: an event being sent is sent again, with the same id, once its lease lapses."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.senders.aclose()

    async def _run(self) -> None:
        await self.ready.wait()
        async with asyncio.TaskGroup() as group:
            for destination in self.outbox.destinations:
                group.create_task(self._deliver(destination), name=f"notify-{destination.kind}")

    async def _deliver(self, destination: Destination) -> None:
        woken = self.outbox.listen()
        delay = self.timings.first_retry
        while True:
            woken.clear()  # before looking: an event committed while we look wakes the next wait
            now = self.clock.now()
            try:
                async with asyncio.timeout(self.timings.store_timeout), self.engine.begin() as conn:
                    row, look_again = await lease_next(
                        conn, destination.address, now, timedelta(seconds=self.timings.lease)
                    )
                if row is not None:
                    await self._send(destination, row)
                    delay = self.timings.first_retry
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: try again later, never give up
                log.warning("delivery to %s stalled, retrying in %.0f s: %s", destination.shown, delay, one_line(exc))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.timings.poll * 30)
                continue
            wait = self.timings.poll
            if look_again is not None:
                wait = min(wait, max((look_again - now).total_seconds(), 0.0))
            if wait > 0:
                await self.clock.wait(woken, wait)

    async def _send(self, destination: Destination, row: Leased) -> None:
        data = row.data
        if data is None and row.type == CALL_ENDED and row.call_sid is not None:
            sid = row.call_sid
            async with asyncio.timeout(self.timings.store_timeout), self.engine.begin() as conn:
                data = await events.call_ended_data(conn, sid, self.outbox.link(f"/admin/calls/{sid}"))
                await fill_data(conn, row.event_id, data)
        sent = await self.senders.send(destination, row.event_id, row.type, row.created_at, data or {}, self.timings)
        retry_in = timedelta(seconds=retry_delay(row.attempts + 1, self.timings))
        async with asyncio.timeout(self.timings.store_timeout), self.engine.begin() as conn:
            state = await settle(conn, row, self.clock.now(), sent.error, retry_in)
        kind = destination.kind
        if sent.ok:
            self.metrics.notify_deliveries.labels(kind, "delivered").inc()
            log.info("%s %s delivered to %s", row.type, row.event_id, destination.shown)
            return
        self.metrics.notify_deliveries.labels(kind, "failed").inc()
        if state == "dead":
            self.metrics.notify_deliveries.labels(kind, "dead").inc()
            log.warning("%s %s to %s is dead after %d tries: %s", row.type, row.event_id, destination.shown,
                        row.attempts + 1, sent.error)  # fmt: skip
        else:
            log.info("%s %s to %s failed (%s); next try in %.0f s", row.type, row.event_id, destination.shown,
                     sent.error, retry_in.total_seconds())  # fmt: skip
