"""What Switchboard and its Speech Engine agree on, written once.

`make configure` sets the engine up with it, the bridge fills it in for each call, and the brain
reads it back on every conversation ElevenLabs opens to `/ws`:

- the brain's path, and the `x-api-key` header that carries SHARED_SECRET on that upgrade;
- the call SID: the bridge sends it as the `call_sid` dynamic variable of each conversation, and the
  engine's request header `x-call-sid` (a `{"variable_name": "call_sid"}` header) hands it to the
  brain, so a conversation's tools act on the right call.
"""

from __future__ import annotations

BRAIN_PATH = "/ws"
SECRET_HEADER = "x-api-key"
CALL_SID_HEADER = "x-call-sid"
CALL_SID_VARIABLE = "call_sid"
CALLER_VARIABLE = "caller"


def dynamic_variables(call_sid: str, caller: str) -> dict[str, str]:
    """The dynamic variables of one call's conversation."""
    return {CALL_SID_VARIABLE: call_sid, CALLER_VARIABLE: caller}


def request_headers(shared_secret: str | None) -> dict[str, object]:
    """The engine's request headers on the upgrade to the brain."""
    return {SECRET_HEADER: shared_secret, CALL_SID_HEADER: {"variable_name": CALL_SID_VARIABLE}}
