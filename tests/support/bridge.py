"""Reading a running server's bridge from a test: its telephony state, its metrics, a stream's outcome."""

from __future__ import annotations

from app.calls.control import EndReason
from app.telephony.state import Telephony
from app.testing.live_server import LiveServer
from app.testing.twilio_caller import TwilioCaller


def telephony(server: LiveServer) -> Telephony:
    return server.app.extensions["switchboard"].telephony


def metric(server: LiveServer, name: str, **labels: str) -> float:
    return telephony(server).metrics.registry.get_sample_value(name, labels) or 0.0


async def ended(server: LiveServer, caller: TwilioCaller) -> EndReason | None:
    """The stream's recorded outcome, once the server has closed Twilio's socket."""
    await caller.wait_closed()
    return await telephony(server).outcomes.get(caller.call_sid)
