"""The review page's routes: server-rendered with Quart's Jinja (everything escaped), no script."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from quart import Blueprint, Response, abort, redirect, render_template, request, url_for
from sqlalchemy.exc import SQLAlchemyError

from app.admin.charts import latency_bar, per_day_bars
from app.admin.guard import CSRF_FIELD, SECURITY_HEADERS, csrf_token, csrf_valid, refusal, same_origin
from app.observability import one_line
from app.records.analyses import NEED_MET
from app.records.outbox import dead_events, send_again, waiting
from app.records.queries import (
    GAPS_PAGE,
    MAX_ID,
    OUTCOMES,
    Cursor,
    count_open,
    get_call,
    list_calls,
    list_gaps,
    mark_gap_handled,
    overview,
)
from app.services import services

log = logging.getLogger("switchboard.admin")
admin = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

MESSAGES_PAGE = 50
DEAD_PAGE = 50
ID = f"int(max={MAX_ID})"  # a path id the store can hold; a larger one matches no route (404)


@admin.before_request
async def _guard() -> Response | None:
    settings = services().settings
    refused = await refusal(settings, services().logins)
    if refused is not None:
        return refused
    if request.method == "POST":
        form = await request.form
        if not csrf_valid(settings, form.get(CSRF_FIELD)) or not same_origin(settings):
            return Response("This change did not come from the review page.\n", 403, content_type="text/plain")
    if not services().records.ready.is_set():
        return await _unavailable()
    return None


@admin.after_request
async def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


@admin.errorhandler(OverflowError)
async def _out_of_range(exc: OverflowError) -> Response:
    """A date past the calendar's end, a number past what the store holds: the request's fault."""
    log.info("review page: parameter out of range: %s", exc)
    return Response("A parameter is out of range.\n", 400, content_type="text/plain")


@admin.errorhandler(SQLAlchemyError)
async def _store_error(exc: SQLAlchemyError) -> Response:
    log.warning("review page: records store error: %s", one_line(exc))
    return await _unavailable()


async def _unavailable() -> Response:
    body = await render_template("admin/unavailable.html", counts=None, csrf="")
    return Response(body, 503, {**SECURITY_HEADERS, "Retry-After": "10"})


async def _page(template: str, **context: Any) -> str:
    """Render with what every page shows: the open counts in the navigation and a CSRF token."""
    async with services().records.engine.connect() as conn:
        counts = await count_open(conn)
    return await render_template(template, counts=counts, csrf=csrf_token(services().settings), **context)


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _number(name: str) -> int | None:
    """A whole-number parameter: None when it is not one (ignored), OverflowError past MAX_ID ("1e20" too)."""
    text = request.args.get(name)
    if text is None:
        return None
    try:
        value: float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
    if abs(value) > MAX_ID:
        raise OverflowError(f"{name} out of range")
    return value if isinstance(value, int) else None


@admin.get("")
@admin.get("/")
async def home() -> str:
    async with services().records.engine.connect() as conn:
        stats = await overview(conn)
    return await _page("admin/overview.html", stats=stats, bars=per_day_bars(stats.days))


@admin.get("/calls")
async def calls() -> str:
    start, end = _day(request.args.get("from")), _day(request.args.get("to"))
    outcome = request.args.get("outcome") if request.args.get("outcome") in OUTCOMES else None
    intents = services().settings.analysis_intents
    intent = request.args.get("intent") if request.args.get("intent") in intents else None
    need_met = request.args.get("need_met") if request.args.get("need_met") in NEED_MET else None
    after = Cursor.decode(request.args.get("after"))
    async with services().records.engine.connect() as conn:
        rows, more = await list_calls(
            conn,
            since=datetime.combine(start, time.min, UTC) if start else None,
            until=datetime.combine(end + timedelta(days=1), time.min, UTC) if end else None,
            outcome=outcome,
            intent=intent,
            need_met=need_met,
            after=after,
        )
    chosen = (("from", start), ("to", end), ("outcome", outcome), ("intent", intent), ("need_met", need_met))
    filters = {k: v for k, v in chosen if v}
    return await _page(
        "admin/calls.html",
        rows=rows,
        outcomes=OUTCOMES,
        intents=intents,
        need_met=NEED_MET,
        filters=filters,
        paged=after is not None,
        next_url=url_for("admin.calls", **filters, after=more.encode()) if more else None,
        first_url=url_for("admin.calls", **filters),
    )


@admin.get("/calls/<call_sid>")
async def call(call_sid: str) -> str:
    async with services().records.engine.connect() as conn:
        detail = await get_call(conn, call_sid[:64])
    if detail is None:
        abort(404)
    scale = max((t.timings_ms.get("total") or 0.0 for t in detail.turns), default=0.0)
    bars = {t.id: latency_bar(t.timings_ms, scale) for t in detail.turns}
    return await _page("admin/call.html", detail=detail, bars=bars)


@admin.get("/gaps")
async def gaps() -> str:
    handled = request.args.get("show") == "handled"
    offset = max(_number("offset") or 0, 0)
    async with services().records.engine.connect() as conn:
        rows = await list_gaps(conn, handled=handled, limit=GAPS_PAGE + 1, offset=offset)
    show = {"show": "handled"} if handled else {}
    return await _page(
        "admin/gaps.html",
        rows=rows[:GAPS_PAGE],
        handled=handled,
        next_url=url_for("admin.gaps", **show, offset=offset + GAPS_PAGE) if len(rows) > GAPS_PAGE else None,
        first_url=url_for("admin.gaps", **show) if offset else None,
    )


@admin.post(f"/gaps/<{ID}:gap_id>/handled")
async def gap_handled(gap_id: int) -> Response:
    async with services().records.engine.begin() as conn:
        await mark_gap_handled(conn, gap_id)
    return redirect(url_for("admin.gaps"), 303)


@admin.get("/messages")
async def messages() -> str:
    before = _number("before")
    rows = await services().records.messages.newest(MESSAGES_PAGE + 1, before)
    more = rows[MESSAGES_PAGE - 1].id if len(rows) > MESSAGES_PAGE else None
    return await _page(
        "admin/messages.html",
        rows=rows[:MESSAGES_PAGE],
        next_url=url_for("admin.messages", before=more) if more else None,
        paged=before is not None,
    )


@admin.post(f"/messages/<{ID}:message_id>/handled")
async def message_handled(message_id: int) -> Response:
    await services().records.messages.mark_handled(message_id)
    return redirect(url_for("admin.messages"), 303)


@admin.get("/deliveries")
async def deliveries() -> str:
    before = _number("before")
    async with services().records.engine.connect() as conn:
        rows = await dead_events(conn, DEAD_PAGE + 1, before)
        queues = await waiting(conn)
    more = rows[DEAD_PAGE - 1].id if len(rows) > DEAD_PAGE else None
    return await _page(
        "admin/deliveries.html",
        rows=rows[:DEAD_PAGE],
        queues=queues,
        destinations=services().records.outbox.destinations,
        next_url=url_for("admin.deliveries", before=more) if more else None,
        paged=before is not None,
    )


@admin.post(f"/deliveries/<{ID}:row_id>/send-again")
async def send_one_again(row_id: int) -> Response:
    return await _send_again(row_id)


@admin.post("/deliveries/send-again")
async def send_all_again() -> Response:
    return await _send_again(None)


async def _send_again(row_id: int | None) -> Response:
    """Dead events back in line with a fresh day of retries; this replica's workers look at once."""
    records = services().records
    async with records.engine.begin() as conn:
        await send_again(conn, datetime.now(UTC), records.outbox.retry_for, row_id)
    records.outbox.wake()
    return redirect(url_for("admin.deliveries"), 303)
