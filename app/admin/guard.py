"""Who may use the review page, and proof that a change was asked for from the page itself.

HTTP Basic, user `admin` and ADMIN_PASSWORD, compared in constant time; no password configured
means every request is refused. A state-changing request must carry a CSRF token: an HMAC, keyed
by the password, of when it was issued, so every replica checks what any replica issued and a
token lapses after CSRF_TTL_S. A Content-Security-Policy forbids every script.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from quart import Response, request

from app.settings import Settings

USER = "admin"
REALM = 'Basic realm="Switchboard review", charset="UTF-8"'
CSRF_FIELD = "csrf_token"
CSRF_TTL_S = 12 * 3600
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def refusal(settings: Settings) -> Response | None:
    """The response that refuses this request, or None when it may go on."""
    password = settings.secret("admin_password")
    if not password:
        return Response("The review page is off: set ADMIN_PASSWORD.\n", 403, content_type="text/plain")
    auth = request.authorization
    user = (auth.username or "") if auth is not None and auth.type == "basic" else ""
    given = (auth.password or "") if auth is not None and auth.type == "basic" else ""
    user_ok = hmac.compare_digest(user.encode(), USER.encode())
    password_ok = hmac.compare_digest(given.encode(), password.encode())
    if not (user_ok and password_ok):
        return Response(
            "Log in as admin with ADMIN_PASSWORD.\n", 401, {"WWW-Authenticate": REALM}, content_type="text/plain"
        )
    return None


def _key(settings: Settings) -> bytes:
    password = settings.secret("admin_password") or ""
    return hmac.new(password.encode(), b"switchboard/admin-csrf/v1", hashlib.sha256).digest()


def csrf_token(settings: Settings, now: float | None = None) -> str:
    issued = str(int(now if now is not None else time.time()))
    return f"{issued}.{hmac.new(_key(settings), issued.encode(), hashlib.sha256).hexdigest()}"


def csrf_valid(settings: Settings, token: str | None, now: float | None = None) -> bool:
    if not token or len(token) > 100:
        return False
    issued, _, mac = token.partition(".")
    if not issued.isdigit():
        return False
    age = (now if now is not None else time.time()) - int(issued)
    expected = hmac.new(_key(settings), issued.encode(), hashlib.sha256).hexdigest()
    return -60 <= age <= CSRF_TTL_S and hmac.compare_digest(mac, expected)


def same_origin(settings: Settings) -> bool:
    """A browser names the page a POST came from; it must be this server (or its public URL)."""
    origin = request.headers.get("Origin")
    if origin is None:  # older browsers and command-line clients send none; the token still applies
        return True
    host = urlsplit(origin).netloc
    allowed = {request.host}
    if settings.public_url:
        allowed.add(urlsplit(settings.public_url).netloc)
    return host in allowed
