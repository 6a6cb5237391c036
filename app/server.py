"""Hypercorn, configured on purpose for a phone agent's traffic."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart


def hypercorn_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    # A brain frame carries the whole transcript history, a Twilio frame 20 ms of audio: 1 MiB is
    # ample for both and stops a peer from making us buffer the 16 MiB default.
    config.websocket_max_message_size = 1024 * 1024
    # No server pings: both peers keep their sockets busy (Twilio sends audio every 20 ms, ElevenLabs
    # pings the brain), and Hypercorn's ping task outlives a closed socket by up to one interval,
    # which holds up graceful shutdown.
    config.websocket_ping_interval = None
    # On SIGTERM, give live calls and turns time to finish before sockets are cut.
    config.graceful_timeout = 10.0
    # Webhook bodies are small forms; a larger incomplete request is not Twilio.
    config.h11_max_incomplete_size = 16 * 1024
    # Access lines would duplicate the per-turn and per-call records; Hypercorn's own lines go
    # through the app's logging, to wherever it writes.
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(app: Quart, bind: str, shutdown_trigger: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until the trigger fires (tests) or SIGINT/SIGTERM (default)."""
    await hypercorn_serve(app, hypercorn_config(bind), shutdown_trigger=shutdown_trigger)
