"""Hypercorn, configured on purpose for a phone agent's traffic."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart

STARTUP_TIMEOUT_S = 300.0


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
    # Live calls have drained before the server stops (see `serve_until_drained`): what is left is
    # a request or two in flight.
    config.graceful_timeout = 10.0
    # Start-up loads the embedding model; on a first run it exports it too, over a minute on a slow
    # machine (Hypercorn gives up after 60 s by default).
    config.startup_timeout = STARTUP_TIMEOUT_S
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


async def serve_until_drained(app: Quart, bind: str) -> None:
    """Serve; SIGTERM or Ctrl-C drains (live calls go on, see `app.serving.drain`) and the server
    stops once drained. A second Ctrl-C stops at once."""
    drain = app.extensions["switchboard"].drain
    now = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if drain.draining and sig == signal.SIGINT:
            now.set()
        drain.begin()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    async def stopped() -> None:
        done = [asyncio.create_task(drain.finished.wait()), asyncio.create_task(now.wait())]
        try:
            await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in done:
                task.cancel()

    await serve(app, bind, stopped)
