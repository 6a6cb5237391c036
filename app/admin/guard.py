"""Who may use the review page, and proof that a change was asked for from the page itself.

HTTP Basic, user `admin` and ADMIN_PASSWORD, compared in constant time; no password configured
means every request is refused. Wrong passwords from one client meet a growing wait before their
401 (`Logins`), one at a time; the right password is never made to wait.

A state-changing request must carry a CSRF token: an HMAC, keyed by the password, of when it was
issued, so every replica checks what any replica issued and a token lapses after CSRF_TTL_S. A
Content-Security-Policy forbids every script.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from quart import Response, request

from app.observability import Metrics
from app.settings import Settings

log = logging.getLogger("switchboard.admin")

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


FREE_FAILURES = 3  # wrong passwords in a row from one client answered at once
FIRST_WAIT_S = 0.25  # then this, doubling with each further one
MAX_WAIT_S = 30.0
FORGET_AFTER_S = 15 * 60  # a client quiet this long starts afresh
MAX_CLIENTS = 10_000


@dataclass
class _Client:
    failures: int = 0
    last: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one wrong guess at a time per client


class Logins:
    """Backoff on wrong admin passwords, per client address; logs and counts every outcome."""

    def __init__(
        self,
        metrics: Metrics,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.sleep = sleep
        self.clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    @staticmethod
    def wait_after(failures: int) -> float:
        """How long the answer to this many wrong passwords in a row waits."""
        if failures <= FREE_FAILURES:
            return 0.0
        return min(FIRST_WAIT_S * 2 ** (failures - FREE_FAILURES - 1), MAX_WAIT_S)

    def succeeded(self, client: str) -> None:
        self.metrics.admin_logins.labels("success").inc()
        known = self._clients.pop(client, None)
        if known is not None and known.failures:
            log.info("review page: logged in from %s after %d wrong password(s)", client, known.failures)
        elif known is None:
            log.info("review page: logged in from %s", client)
        self._clients[client] = _Client(last=self.clock())
        self._trim()

    async def failed(self, client: str, user: str) -> None:
        """Count a wrong password, then wait as long as this client's run of them says."""
        self.metrics.admin_logins.labels("failure").inc()
        now = self.clock()
        known = self._clients.pop(client, None)
        if known is None or now - known.last > FORGET_AFTER_S:
            known = _Client()
        self._clients[client] = known
        self._trim()
        async with known.lock:
            known.failures += 1
            known.last = self.clock()
            wait = self.wait_after(known.failures)
            log.warning(
                "review page: wrong password from %s for user %r (%d in a row; answered after %.2f s)",
                client, user[:40], known.failures, wait,
            )  # fmt: skip
            if wait:
                await self.sleep(wait)

    def _trim(self) -> None:
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)


async def refusal(settings: Settings, logins: Logins) -> Response | None:
    """The response that refuses this request, or None when it may go on."""
    password = settings.secret("admin_password")
    if not password:
        return Response("The review page is off: set ADMIN_PASSWORD.\n", 403, content_type="text/plain")
    auth = request.authorization
    user = (auth.username or "") if auth is not None and auth.type == "basic" else ""
    given = (auth.password or "") if auth is not None and auth.type == "basic" else ""
    user_ok = hmac.compare_digest(user.encode(), USER.encode())
    password_ok = hmac.compare_digest(given.encode(), password.encode())
    client = request.remote_addr or "unknown"
    if user_ok and password_ok:
        logins.succeeded(client)
        return None
    if auth is not None:  # a browser's first request carries no password: that is not a guess
        await logins.failed(client, user)
    return Response(
        "Log in as admin with ADMIN_PASSWORD.\n", 401, {"WWW-Authenticate": REALM}, content_type="text/plain"
    )


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
