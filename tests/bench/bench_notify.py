"""Webhook figures for `make bench` (notes, not bars):

1. Delivery latency: a message saved (`MessageStore.add` returned) to its signed event at a local
   receiver, p50 over 100 messages, each saved while the delivery task is idle; on SQLite and
   PostgreSQL, and on PostgreSQL also saved by one replica and delivered by another (which finds it
   by polling, every second, so that figure is about half a second).
2. Call latency with a stalled receiver: brain overhead at 20 conversations (as `bench_brain.py`)
   with no webhooks, and with five webhook URLs at a receiver that accepts connections and never
   answers while 250 events (50 messages to five URLs) wait for it, interleaved so drift hits both alike.
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvloop
from sqlalchemy import func, select

from app.notify.delivery import Delivery
from app.observability import Metrics
from app.records.schema import outbox
from app.records.store import RecordsStore
from app.settings import Settings
from tests.bench.bench_brain import DATA, compare_overhead, records_url
from tests.support.receiver import Receiver

MESSAGES = 100
SECRET = "bench-webhook-secret"


def _percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:7.2f} ms  p95 {q[94] * 1000:7.2f} ms  (n={len(values)})"


async def _latencies(settings: Callable[[str], Settings], across_replicas: bool = False) -> list[float]:
    async with Receiver() as receiver:
        config = settings(receiver.url)
        saving = RecordsStore(config, Metrics())
        delivering = RecordsStore(config, Metrics()) if across_replicas else saving
        delivery = Delivery(config, Metrics(), delivering.engine, delivering.outbox, delivering.ready)
        stores = {id(s): s for s in (saving, delivering)}.values()
        for store in stores:
            await store.start()
            await store.ready.wait()
        delivery.start()
        latencies = []
        try:
            for n in range(MESSAGES + 5):  # the first five warm up connections
                await saving.messages.add(
                    name="Dana Smith", callback_number="+14155550100", message=f"Please call me back ({n}).",
                    call_sid=None, caller=None, conversation_id=None,
                )  # fmt: skip
                saved = time.perf_counter()
                await receiver.wait(lambda r, n=n: len(r.requests) == n + 1, timeout=30)
                if n >= 5:
                    latencies.append(receiver.requests[-1].at - saved)
                # The next message finds the worker idle, at a random point of its poll, as a real one would.
                await _settled(delivering)
                await asyncio.sleep(random.uniform(0, 1.0 if across_replicas else 0.05))
        finally:
            await delivery.stop()
            for store in stores:
                await store.stop()
    return latencies


async def _settled(store: RecordsStore) -> None:
    """Until the delivery task has recorded every answer (only the store can say)."""
    async with asyncio.timeout(30):
        while True:
            async with store.engine.connect() as conn:
                if not (await conn.execute(select(func.count()).where(outbox.c.state == "pending"))).scalar_one():
                    return
            await asyncio.sleep(0.002)


def test_delivery_latency(tmp_path: Path) -> None:
    def sqlite(url: str) -> Settings:
        return Settings(_env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'records.sqlite3'}",
                        notify_webhook_url=url, notify_webhook_secret=SECRET, record_calls=False)  # fmt: skip

    print(f"\nmessage saved -> event at the receiver, {MESSAGES} messages one after another:")
    print(f"  SQLite:                          {_percentiles(uvloop.run(_latencies(sqlite)))}")
    from tests.support.servers import _postgres_bin, postgres_server

    if _postgres_bin() is None:
        print("  PostgreSQL is not installed: skipped")
        return
    with postgres_server() as pg:
        for name, across in (("PostgreSQL:", False), ("PostgreSQL, another replica:", True)):
            database = pg.create_database(f"notify_{int(across)}")

            def postgres(url: str, database: str = database) -> Settings:
                return Settings(_env_file=None, data_dir=tmp_path, database_url=database, notify_webhook_url=url,
                                notify_webhook_secret=SECRET, record_calls=False)  # fmt: skip

            print(f"  {name:<32} {_percentiles(uvloop.run(_latencies(postgres, across)))}")


async def _backlog(settings: Settings, events: int) -> None:
    store = RecordsStore(settings, Metrics())
    await store.start()
    await store.ready.wait()
    for n in range(events):
        await store.messages.add(name="Dana", callback_number="+14155550100", message=f"Backlog {n}.",
                                 call_sid=None, caller=None, conversation_id=None)  # fmt: skip
    await store.stop()


async def _tries(settings: Settings) -> tuple[int, str]:
    """What the stalled run's delivery did: sends that gave up, and the last error."""
    store = RecordsStore(settings, Metrics())
    await store.start()
    await store.ready.wait()
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(outbox.c.state, outbox.c.attempts, outbox.c.last_error))).all()
    await store.stop()
    assert all(row.state == "pending" for row in rows) and len(rows) == 250
    return sum(row.attempts for row in rows), next(row.last_error for row in rows if row.last_error)


def test_call_latency_with_a_stalled_receiver(tmp_path: Path) -> None:
    stalled = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(1024)
    port = stalled.getsockname()[1]
    urls = ",".join(f"http://127.0.0.1:{port}/hook/{n}" for n in range(5))
    waiting = []

    @contextmanager
    def stalling(work: Path) -> Iterator[dict[str, str]]:
        """50 messages (250 events) already waiting for the stalled receiver when the server starts."""
        settings = Settings(_env_file=None, data_dir=DATA, database_url=records_url(work),
                            notify_webhook_url=urls, notify_webhook_secret=SECRET)  # fmt: skip
        uvloop.run(_backlog(settings, 50))
        yield {"NOTIFY_WEBHOOK_URL": urls, "NOTIFY_WEBHOOK_SECRET": SECRET}
        waiting.append(uvloop.run(_tries(settings)))

    try:
        compare_overhead(tmp_path, "webhooks:", {"none": {}, "stalled receiver (5 URLs)": stalling}, bar=None)
    finally:
        stalled.close()
    for tries, error in waiting:
        print(f"  stalled run: all 250 events still waiting, {tries} sends timed out ({error})")
