"""Looking the caller up at pickup (CALLER_LOOKUP_URL), and finding the answer again later.

When Twilio's webhook arrives, signed and admitted, the replica it reached POSTs
`{"caller": "+E164", "call_sid": "CA…"}` to CALLER_LOOKUP_URL, signed like the webhooks
(`Switchboard-Signature`, keyed by NOTIFY_WEBHOOK_SECRET: without the secret no lookup is made).
Nothing waits for the answer: the greeting is sent when ElevenLabs' conversation opens, with the
name if the answer is in by then; the model gets the answer from the first turn after it arrived.
CALLER_LOOKUP_TIMEOUT_MS after the webhook the request is cancelled, and nothing later is kept.

The answer (see `caller_context`) is kept in this process for the conversation opened early here,
in Redis when there are several replicas (`sb:caller:<sid>`: the brain's conversation, or a media
stream, may reach another replica), and in the call's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from redis.exceptions import RedisError

from app.calls.caller_context import MAX_ANSWER_BYTES, AnswerRefused, CallerContext, parse_answer
from app.calls.control import CallControl
from app.calls.shared import COMMAND_TIMEOUT_S, PREFIX, SharedState
from app.notify.signature import signed_json
from app.observability import Metrics, one_line
from app.records.events import CallerLookedUp, RecordEvent
from app.settings import Settings

log = logging.getLogger("switchboard.lookup")

USER_AGENT = "Switchboard-Lookup/1"
MAX_KEPT = 10_000  # lookups this process keeps at once (each lives about as long as its call)


@dataclass
class Lookup:
    """One call's lookup on this replica: under way until `done`."""

    expires: float
    done: bool = False
    context: CallerContext | None = None


class CallerLookups:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        record: Callable[[RecordEvent], None] | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.url = settings.caller_lookup
        self.timeout = settings.caller_lookup_timeout_ms / 1000
        self.keep_s = settings.max_call_seconds + 3600.0
        self._record = record
        self._shared = shared
        self._lookups: dict[str, Lookup] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def start(self) -> None:
        if self.settings.caller_lookup_url is not None and not self.enabled:
            log.warning("caller lookup is off: CALLER_LOOKUP_URL is set, NOTIFY_WEBHOOK_SECRET is not (never unsigned)")
        if self.enabled:
            # No redirects and no proxy from the environment, as for the webhooks; no compression, so
            # the 4 KB cap is on what arrives. CALLER_LOOKUP_TIMEOUT_MS bounds each lookup (not httpx's
            # own timeouts, which would cut a longer one short).
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=None,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # --- the lookup -----------------------------------------------------------------------------

    def begin(self, call_sid: str, caller: str | None) -> None:
        """Look the caller up in the background (once per call; never for a withheld number)."""
        if self._client is None or caller is None or call_sid in self._lookups:
            return
        now = time.monotonic()
        for sid in [sid for sid, lookup in self._lookups.items() if lookup.expires < now]:
            del self._lookups[sid]
        if len(self._lookups) >= MAX_KEPT:
            del self._lookups[next(iter(self._lookups))]
        lookup = self._lookups[call_sid] = Lookup(expires=now + self.keep_s)
        task = asyncio.get_running_loop().create_task(self._run(call_sid, caller, lookup), name=f"lookup-{call_sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call_sid: str, caller: str, lookup: Lookup) -> None:
        started = time.perf_counter()
        context = None
        try:
            async with asyncio.timeout(self.timeout):
                outcome, context = await self._ask(call_sid, caller)
        except TimeoutError:
            outcome = "timeout"
            log.warning("caller lookup: no answer within %d ms", self.settings.caller_lookup_timeout_ms,
                        extra={"call_sid": call_sid})  # fmt: skip
        except httpx.HTTPError as exc:
            outcome = "error"
            log.warning("caller lookup failed: %s", type(exc).__name__, extra={"call_sid": call_sid})
        lookup.context, lookup.done = context, True
        self.metrics.caller_lookups.labels(outcome).inc()
        self.metrics.caller_lookup_seconds.observe(time.perf_counter() - started)
        if outcome != "timeout":
            log.info("caller lookup: %s", outcome, extra={"call_sid": call_sid})
        await self._share(call_sid, context)
        if self._record is not None:
            self._record(CallerLookedUp(call_sid, outcome, context.fields if context else None, datetime.now(UTC)))

    async def _ask(self, call_sid: str, caller: str) -> tuple[str, CallerContext | None]:
        assert self._client is not None and self.url is not None
        body = json.dumps({"caller": caller, "call_sid": call_sid}, separators=(",", ":")).encode()
        secret = self.settings.secret("notify_webhook_secret") or ""
        headers = signed_json(secret, body)
        answer = bytearray()
        async with self._client.stream("POST", self.url, content=body, headers=headers) as response:
            if response.status_code in (204, 404):
                return "unknown", None
            if not 200 <= response.status_code < 300:
                log.warning("caller lookup answered HTTP %d", response.status_code, extra={"call_sid": call_sid})
                return "error", None
            async for chunk in response.aiter_raw():
                answer += chunk
                if len(answer) > MAX_ANSWER_BYTES:
                    break  # refused whole: the rest is never read
        try:
            context = parse_answer(bytes(answer))
        except AnswerRefused as exc:
            log.warning("caller lookup answer refused: %s", exc, extra={"call_sid": call_sid})
            return exc.reason, None
        if context.dropped:
            log.info("caller lookup: %d entries of the answer not kept (not flat, empty, or a bad key)",
                     context.dropped, extra={"call_sid": call_sid})  # fmt: skip
        return ("answered", context) if context.fields else ("unknown", None)

    async def _share(self, call_sid: str, context: CallerContext | None) -> None:
        """For the other replicas: the answer, or that there is none (so they stop asking)."""
        if self._shared is None:
            return
        value = json.dumps({"fields": context.fields if context else None})
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                await self._shared.redis.set(_key(call_sid), value, ex=int(self.keep_s))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("caller lookup not shared: %s", one_line(exc), extra={"call_sid": call_sid})

    # --- what is known ----------------------------------------------------------------------------

    async def find(self, call_sid: str) -> tuple[bool, CallerContext | None]:
        """(final, the caller's data): final once the lookup is over, here or on another replica
        (with nothing, when it gave no data or none was made); not final while it may still answer."""
        if not self.enabled:
            return True, None
        lookup = self._lookups.get(call_sid)
        if lookup is not None:
            return lookup.done, lookup.context
        if self._shared is None:
            return True, None  # one process: a lookup for this call would be here
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                stored = await self._shared.redis.get(_key(call_sid))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("caller lookup not read: %s", one_line(exc), extra={"call_sid": call_sid})
            return False, None
        if stored is None:
            return False, None
        with contextlib.suppress(ValueError, TypeError):
            fields = json.loads(stored)["fields"]
            return True, CallerContext(fields) if isinstance(fields, dict) else None
        return True, None

    def so_far(self, call_sid: str) -> CallerSoFar:
        return CallerSoFar(self, call_sid)

    def conversation(self, call_sid: Callable[[], str | None]) -> ConversationCaller:
        return ConversationCaller(self, call_sid)

    # --- CallObserver -----------------------------------------------------------------------------

    async def call_started(self, call: CallControl) -> None:
        """Nothing to do: the lookup began with the webhook."""

    async def call_ended(self, call: CallControl) -> None:
        self._lookups.pop(call.call_sid, None)

    def dtmf(self, call: CallControl, digit: str) -> None:
        """Keys are not the lookup's business."""


class CallerSoFar:
    """What is known about a call's caller at any moment, without waiting: this replica's lookup as
    it stands, or, when another replica made it, its shared answer (read in the background)."""

    def __init__(self, lookups: CallerLookups, call_sid: str) -> None:
        self._local = lookups._lookups.get(call_sid)
        self._reading: asyncio.Task[tuple[bool, CallerContext | None]] | None = None
        if self._local is None and lookups.enabled and lookups._shared is not None:
            self._reading = asyncio.get_running_loop().create_task(lookups.find(call_sid), name=f"lookup-{call_sid}")

    @property
    def context(self) -> CallerContext | None:
        if self._local is not None:
            return self._local.context
        reading = self._reading
        if reading is not None and reading.done() and not reading.cancelled():
            return reading.result()[1]
        return None

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)


class ConversationCaller:
    """A brain conversation's view of its caller: asked again each turn until the lookup is over."""

    def __init__(self, lookups: CallerLookups, call_sid: Callable[[], str | None]) -> None:
        self._lookups = lookups
        self._call_sid = call_sid
        self._final = False
        self._context: CallerContext | None = None

    async def context(self) -> CallerContext | None:
        if self._final:
            return self._context
        call_sid = self._call_sid()
        if call_sid is None:
            return None
        self._final, self._context = await self._lookups.find(call_sid)
        return self._context


def _key(call_sid: str) -> str:
    return f"{PREFIX}caller:{call_sid}"
