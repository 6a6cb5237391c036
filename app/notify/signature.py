"""`Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, as payment
providers sign their webhooks: the timestamp is signed too, so a receiver can refuse old replays.
The webhooks and the caller lookup sign their requests alike, with NOTIFY_WEBHOOK_SECRET."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Switchboard-Signature"


def sign(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def signed_json(secret: str, body: bytes) -> dict[str, str]:
    """The headers of a JSON POST signed now."""
    return {"Content-Type": "application/json", HEADER: sign(secret, body, int(time.time()))}
