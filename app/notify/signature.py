"""`Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, as payment
providers sign their webhooks: the timestamp is signed too, so a receiver can refuse old replays."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Switchboard-Signature"
TOLERANCE_S = 300


def sign(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def verify(secret: str, header: str, body: bytes, now: float | None = None, tolerance: int = TOLERANCE_S) -> bool:
    """What a receiver does (the README shows the same in a few lines)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    at, given = fields.get("t", ""), fields.get("v1", "")
    if not at.isdigit() or abs((now if now is not None else time.time()) - int(at)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), at.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
