"""The short-lived per-call token that binds a media stream to the webhook that admitted it.

The webhook (signature already checked) mints it into the TwiML as a `<Parameter>`; Twilio hands it
back in the stream's `start.customParameters`. Only someone who saw our TwiML can open a stream for
that call, and only for a short while. The key is derived from the Twilio auth token, so every
replica behind a load balancer verifies what any other replica minted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

TTL_S = 60
_VERSION = "v1"


def derive_key(auth_token: str) -> bytes:
    """A key of its own for call tokens, so a token never doubles as a webhook signature."""
    return hmac.new(auth_token.encode(), b"switchboard/call-token/v1", hashlib.sha256).digest()


def _mac(key: bytes, call_sid: str, caller: str, expires: int, context: str) -> str:
    message = f"{_VERSION}\n{call_sid}\n{caller}\n{expires}" + (f"\n{context}" if context else "")
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(key: bytes, call_sid: str, caller: str, now: float, ttl_s: int = TTL_S, context: str = "") -> str:
    """`context`: more of the TwiML the token vouches for (a call coming back from a transfer: which,
    and what the agent says first)."""
    expires = int(now) + ttl_s
    return f"{_VERSION}.{expires}.{_mac(key, call_sid, caller, expires, context)}"


def verify(key: bytes, token: object, call_sid: str, caller: str, now: float, context: str = "") -> bool:
    """True only for an unexpired token minted for exactly this call SID, caller and context."""
    if not isinstance(token, str) or len(token) > 128:
        return False
    version, _, rest = token.partition(".")
    expires_text, _, mac = rest.partition(".")
    if version != _VERSION or not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if now > expires:
        return False
    return hmac.compare_digest(mac.encode(), _mac(key, call_sid, caller, expires, context).encode())
