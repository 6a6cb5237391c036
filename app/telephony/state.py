"""The Twilio side's state: admission slots, how each stream ended, transfers under way, the
ElevenLabs client for signed URLs, the conversations opened early, the caller lookups, the bridge's
limits, and the observers told about every call.

Opened in `before_serving` and closed in `after_serving` through `Services`, which swaps in the
shared (Redis) admission, outcomes and transfers when REDIS_URL is set, and lookups that are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import httpx
from elevenlabs.client import AsyncElevenLabs

from app.calls.admission import Admission, CallSlots
from app.calls.caller_lookup import CallerLookups, CallerSoFar
from app.calls.control import CallControl, CallObserver
from app.calls.outcomes import Outcomes, StreamOutcomes
from app.observability import Metrics
from app.settings import Settings
from app.telephony.elevenlabs_leg import EarlyStarts
from app.telephony.transfers import LocalTransfers, Transfers

log = logging.getLogger("switchboard.telephony")

# How often the Speech Engine's settings are read again (a greeting turned on by `make configure`
# is picked up within this; sooner after a failed reading), and how long a call waits for the first.
GREETING_CHECK_EVERY_S = 300.0
GREETING_RETRY_S = 30.0
GREETING_CHECK_WAIT_S = 2.0

T = TypeVar("T")


async def bounded(
    work: Awaitable[T],
    timeout: float,
    fallback: T,
    what: str,
    logger: logging.Logger = log,
    extra: Mapping[str, object] | None = None,
) -> T:
    """Await shared call state for at most `timeout`: on any failure, log `what` and why, and return
    `fallback`, so the store (Redis, with several replicas) never decides a call's fate by failing."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except Exception as exc:
        logger.warning("%s: %s", what, exc or type(exc).__name__, extra=extra)
        return fallback


@dataclass(frozen=True)
class BridgeLimits:
    """Every wait in the bridge is bounded; tests shorten these."""

    start_timeout: float = 10.0  # accepted upgrade → Twilio `start`
    ready_timeout: float = 8.0  # opening a conversation: signed URL, socket open, conversation metadata
    early_unclaimed: float = 5.0  # a conversation opened early that no stream has taken this long after is closed
    send_timeout: float = 2.0  # any one send to either peer
    close_timeout: float = 2.0  # closing the ElevenLabs socket
    observer_timeout: float = 1.0  # each observer callback
    buffer_frames: int = 250  # caller audio held until ElevenLabs is ready: 5 s of 20 ms frames
    max_call_seconds: float = 900.0  # MAX_CALL_SECONDS


class Telephony:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = BridgeLimits(max_call_seconds=settings.max_call_seconds)
        self.slots: Admission = CallSlots(settings.max_concurrent_calls)
        self.outcomes: Outcomes = StreamOutcomes()
        self.transfers: Transfers = LocalTransfers()
        self.observers: list[CallObserver] = []
        self.calls: dict[str, CallControl] = {}  # the streams this process holds, by call SID
        self.early = EarlyStarts(self)
        self.lookups = CallerLookups(settings, metrics)
        self.elevenlabs: AsyncElevenLabs | None = None
        self._http: httpx.AsyncClient | None = None
        # Conversation sockets to ElevenLabs: aiohttp's WebSocket client costs about half as much CPU
        # per frame as the alternatives, and every call sends and receives 50 frames a second.
        self.upstream_client: aiohttp.ClientSession | None = None
        self._greeting_allowed = False
        self._greeting_checked = asyncio.Event()
        self._greeting_check: asyncio.Task[None] | None = None

    @property
    def bridge_configured(self) -> bool:
        return self.settings.elevenlabs_api_key is not None and bool(self.settings.speech_engine_id)

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False)
        self.upstream_client = aiohttp.ClientSession()
        kwargs = {"base_url": self.settings.elevenlabs_base_url} if self.settings.elevenlabs_base_url else {}
        self.elevenlabs = AsyncElevenLabs(
            api_key=self.settings.secret("elevenlabs_api_key"), httpx_client=self._http, **kwargs
        )
        if self.settings.twilio_auth_token is None or self.settings.public_url is None:
            log.warning("Twilio webhook and /media-stream refuse every request: set TWILIO_AUTH_TOKEN and PUBLIC_URL")
        elif not self.bridge_configured:
            log.warning("calls get the apology and FALLBACK_NUMBER: set ELEVENLABS_API_KEY and SPEECH_ENGINE_ID")
        if self.bridge_configured:
            self._greeting_check = asyncio.create_task(self._check_greeting(), name="greeting-check")

    async def greeting(self, first: str | None = None, caller: CallerSoFar | None = None) -> str | None:
        """What a conversation starting now says first: `first` (a call back from a transfer), else
        GREETING with the caller's name if the lookup has answered with one by now (it is never
        waited for); once the engine is known to allow it.

        ElevenLabs refuses a conversation that overrides a field its engine does not allow, so a
        first message the engine would refuse is not sent: the call goes on without it.
        """
        text = first or self.settings.first_message
        if self._greeting_check is None or text is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GREETING_CHECK_WAIT_S):
                await self._greeting_checked.wait()
        if not self._greeting_allowed:
            return None
        if first is not None:
            return first
        known = caller.context if caller is not None else None
        return self.settings.greeting_for(known.name if known is not None else None)

    async def _check_greeting(self) -> None:
        assert self.elevenlabs is not None and self.settings.speech_engine_id
        engine_id = self.settings.speech_engine_id
        while True:
            pause = GREETING_RETRY_S
            try:
                engine = await self.elevenlabs.speech_engine.get(
                    engine_id, request_options={"max_retries": 1, "timeout_in_seconds": 5}
                )
                overrides = getattr(getattr(engine, "config", None), "overrides", None)
                allowed = getattr(overrides, "first_message", None) is True
                if (
                    not allowed
                    and self.settings.first_message
                    and (self._greeting_allowed or not self._greeting_checked.is_set())
                ):
                    log.warning(
                        "calls start without the greeting: Speech Engine %s does not allow the first-message "
                        "override (make configure says how to allow it)",
                        engine_id,
                    )
                self._greeting_allowed = allowed
                pause = GREETING_CHECK_EVERY_S
            except Exception as exc:  # keep what was known; the next reading may work
                log.warning("cannot read Speech Engine %s for the greeting: %s", engine_id, type(exc).__name__)
            self._greeting_checked.set()
            await asyncio.sleep(pause)

    async def stop(self) -> None:
        await self.early.close()
        if self._greeting_check is not None:
            self._greeting_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._greeting_check
        if self._http is not None:
            await self._http.aclose()
        if self.upstream_client is not None:
            await self.upstream_client.close()
