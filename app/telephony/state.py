"""The Twilio side's state: admission slots, how each stream ended, the ElevenLabs client for
signed URLs, the bridge's limits, and the observers told about every call.

Opened in `before_serving` and closed in `after_serving` through `Services`, which swaps in the
shared (Redis) admission and outcomes when REDIS_URL is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import httpx
from elevenlabs.client import AsyncElevenLabs

from app.calls.admission import Admission, CallSlots
from app.calls.control import CallObserver
from app.calls.outcomes import Outcomes, StreamOutcomes
from app.observability import Metrics
from app.settings import Settings

log = logging.getLogger("switchboard.telephony")


@dataclass(frozen=True)
class BridgeLimits:
    """Every wait in the bridge is bounded; tests shorten these."""

    start_timeout: float = 10.0  # accepted upgrade → Twilio `start`
    ready_timeout: float = 8.0  # `start` → signed URL, socket open, conversation metadata
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
        self.observers: list[CallObserver] = []
        self.elevenlabs: AsyncElevenLabs | None = None
        self._http: httpx.AsyncClient | None = None
        # Conversation sockets to ElevenLabs: aiohttp's WebSocket client costs about half as much CPU
        # per frame as the alternatives, and every call sends and receives 50 frames a second.
        self.upstream_client: aiohttp.ClientSession | None = None

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

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self.upstream_client is not None:
            await self.upstream_client.close()
