"""RECORDS_RETENTION_DAYS: calls and turns older than the window are deleted, daily, by the server,
with their analyses and what the caller lookup answered.

Messages and gaps are kept until someone marks them handled, then for the same window; events in the
outbox for the window after they were delivered (or given up on). Passages no remaining turn points
to go with them. Every replica may run it; deleting twice deletes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.records.outbox import purge_outbox
from app.records.schema import analyses, caller_lookups, calls, gaps, messages, passages, turn_sources, turns

EVERY_S = 24 * 3600.0


async def purge(engine: AsyncEngine, days: int, now: datetime) -> dict[str, int]:
    """Delete what is older than `days` before `now`; returns how many rows of each kind went."""
    cutoff = now - timedelta(days=days)
    async with engine.begin() as conn:
        gone = {
            "turns": (await conn.execute(delete(turns).where(turns.c.started_at < cutoff))).rowcount,
            "calls": (await conn.execute(delete(calls).where(calls.c.started_at < cutoff))).rowcount,
            # An analysis goes with its call (it is made after the call ends, so it may be younger).
            "analyses": (
                await conn.execute(
                    delete(analyses).where(~exists(select(calls.c.id).where(calls.c.call_sid == analyses.c.call_sid)))
                )
            ).rowcount,
            "lookups": (
                await conn.execute(delete(caller_lookups).where(caller_lookups.c.looked_up_at < cutoff))
            ).rowcount,
            "messages": (await conn.execute(delete(messages).where(messages.c.handled_at < cutoff))).rowcount,
            "gaps": (
                await conn.execute(delete(gaps).where(gaps.c.handled_at < cutoff, gaps.c.last_asked_at < cutoff))
            ).rowcount,
        }
        unused = ~exists(select(turn_sources.c.passage_id).where(turn_sources.c.passage_id == passages.c.id))
        gone["passages"] = (await conn.execute(delete(passages).where(unused))).rowcount
        gone["events"] = await purge_outbox(conn, cutoff)
    return gone
