"""The records from the command line: `python -m app calls`, `calls show SID`, `gaps`, `messages`.

Text for people, `--json` for machines (one JSON document on stdout). Each command returns its exit
status: 0 done, 1 not found.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TextIO

from app.records.queries import CallDetail, get_call, list_calls, list_gaps
from app.records.store import RecordsStore, open_for_reading
from app.settings import Settings

LIST_LIMIT = 50


async def _with_store(settings: Settings, work: Callable[[RecordsStore], Awaitable[int]]) -> int:
    store = await open_for_reading(settings)
    try:
        return await work(store)
    finally:
        await store.stop()


def _dump(document: Any, out: TextIO) -> None:
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


async def calls(
    settings: Settings,
    when: datetime | None,
    as_json: bool,
    limit: int,
    out: TextIO,
    intent: str | None = None,
    need_met: str | None = None,
) -> int:
    async def work(store: RecordsStore) -> int:
        async with store.engine.connect() as conn:
            rows, _ = await list_calls(conn, since=when, intent=intent, need_met=need_met, limit=limit)
        if as_json:
            _dump({"calls": [row.to_json() for row in rows]}, out)
            return 0
        if not rows:
            print("No calls" + (f" since {when:%Y-%m-%d %H:%M} UTC" if when else "") + ".", file=out)
        for row in rows:
            duration = f"{row.duration_s:5.0f} s" if row.duration_s is not None else "    - "
            print(
                f"{_when(row.started_at)}  {row.caller_masked:>16}  {duration}  {row.outcome:<11}  "
                f"{row.turns:>3} turns  {row.call_sid}",
                file=out,
            )
            if row.summary:
                print(f"    {row.intent}, {_shown(row.need_met)}: {row.summary}", file=out)
        return 0

    return await _with_store(settings, work)


async def call(settings: Settings, call_sid: str, as_json: bool, out: TextIO) -> int:
    async def work(store: RecordsStore) -> int:
        async with store.engine.connect() as conn:
            detail = await get_call(conn, call_sid)
        if detail is None:
            print(f"No call {call_sid} in the records.", file=sys.stderr)
            return 1
        if as_json:
            _dump(detail.to_json(), out)
        else:
            _print_call(detail, out)
        return 0

    return await _with_store(settings, work)


def _print_call(detail: CallDetail, out: TextIO) -> None:
    c = detail.call
    duration = f"{c.duration_s:.0f} s" if c.duration_s is not None else "-"
    print(f"Call {c.call_sid} from {c.caller_masked}, {_when(c.started_at)} UTC, {duration}", file=out)
    print(f"Outcome: {c.outcome}; ended: {c.ended_how}", file=out)
    if c.transfer_how:
        print(f"Transfer: {c.transfer_how}", file=out)
    lookup = detail.caller_lookup
    if lookup is not None:
        print(f"Caller lookup: {_shown(lookup.outcome)}", file=out)
        for key, value in (lookup.data or {}).items():
            print(f"  {key}: {value}", file=out)
    _print_analysis(detail, out)
    if detail.greeting:
        print(f"\n  agent:  {detail.greeting}", file=out)
    for turn in detail.turns:
        t = turn.timings_ms
        timing = ", ".join(f"{name.replace('_', ' ')} {value:.0f} ms" for name, value in t.items() if value is not None)
        print(f"\n  caller: {turn.caller_text}", file=out)
        print(f"  agent:  {turn.agent_text}" + ("  [interrupted]" if turn.interrupted else ""), file=out)
        notes = [turn.outcome]
        if turn.unanswered:
            notes.append("unanswered question")
        if turn.fallback:
            notes.append(f"fallback: {turn.fallback}")
        notes += [f"{tool['tool']}: {tool['decision']}" for tool in turn.tools]
        print(f"          ({'; '.join(notes)}; {timing})", file=out)
        for source in turn.sources:
            print(f"          read {source.source} > {source.heading} ({source.similarity:.2f})", file=out)


def _print_analysis(detail: CallDetail, out: TextIO) -> None:
    stored = detail.analysis
    if stored is None:
        return
    if stored.analysis is None:
        state = f"failed after {stored.attempts} tries: {stored.error}" if stored.state == "failed" else "pending"
        print(f"Analysis: {state}", file=out)
        return
    a = stored.analysis
    print(f"Analysis ({a.method}): intent {a.intent}; need met: {_shown(a.need_met)}", file=out)
    print(f"  {a.summary}", file=out)
    for name, value in a.fields.items():
        print(f"  {name}: {value if value is not None else '- (' + a.empty.get(name, 'empty') + ')'}", file=out)


def _shown(value: str | None) -> str:
    return (value or "-").replace("_", " ")


async def gaps(settings: Settings, as_json: bool, handled: bool, out: TextIO) -> int:
    async def work(store: RecordsStore) -> int:
        async with store.engine.connect() as conn:
            rows = await list_gaps(conn, handled=handled)
        if as_json:
            _dump({"gaps": [row.to_json() for row in rows]}, out)
            return 0
        if not rows:
            print("No handled gaps." if handled else "No open knowledge gaps.", file=out)
        for row in rows:
            print(f"{row.count:>4}x  last {_when(row.last_asked_at)}  {row.example}", file=out)
            if row.calls:
                print(f"        calls: {', '.join(row.calls)}", file=out)
        return 0

    return await _with_store(settings, work)


async def messages(settings: Settings, when: datetime | None, as_json: bool, out: TextIO) -> int:
    async def work(store: RecordsStore) -> int:
        found = await store.messages.since(when)
        if as_json:
            _dump([m.to_json() for m in found], out)
            return 0
        if not found:
            print("No messages" + (f" since {when:%Y-%m-%d %H:%M} UTC" if when else "") + ".", file=out)
        for m in found:
            state = "  (handled)" if m.handled_at else ""
            department = f"  for {m.department}" if m.department else ""
            print(
                f"{_when(m.created_at)}  {m.name}  {m.callback_number}{department}  (call {m.call_sid or '-'}){state}",
                file=out,
            )
            print(f"    {m.message}", file=out)
        return 0

    return await _with_store(settings, work)
