"""Is this request really from Twilio? Signatures checked against the public URL Twilio used.

Behind a tunnel or proxy the app sees http://127.0.0.1:PORT/..., but Twilio signed the public
https URL; so the URL is rebuilt from PUBLIC_URL plus the raw path and raw query, never taken from
the request. Validation itself is the twilio library's `RequestValidator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from app.settings import Settings


def webhook_configured(settings: Settings) -> bool:
    return settings.twilio_auth_token is not None and settings.public_url is not None


def raw_path(scope: Mapping[str, Any], path: str) -> str:
    """The path exactly as the client wrote it (ASGI `raw_path`), falling back to re-quoting."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) and raw else quote(path)


def public_url(settings: Settings, path: str, query: bytes = b"", *, scheme: str | None = None) -> str:
    assert settings.public_url is not None
    parts = urlsplit(settings.public_url)
    url = f"{scheme or parts.scheme}://{parts.netloc}{path}"
    return f"{url}?{query.decode('latin-1')}" if query else url


def stream_url(settings: Settings, path: str) -> str:
    """The `<Stream url>`: the public host with a WebSocket scheme (wss for an https PUBLIC_URL)."""
    assert settings.public_url is not None
    scheme = "wss" if settings.public_url.startswith("https:") else "ws"
    return public_url(settings, path, scheme=scheme)


def stream_signed_urls(settings: Settings, path: str, query: bytes = b"") -> list[str]:
    """Every URL Twilio may have signed for a media-stream upgrade (which one is not documented): the
    stream URL as written in the TwiML and its https form, each with and without the default port."""
    assert settings.public_url is not None
    parts = urlsplit(settings.public_url)
    secure = parts.scheme == "https"
    default = 443 if secure else 80
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    netlocs = [parts.netloc] if parts.port not in (None, default) else [host, f"{host}:{default}"]
    suffix = f"{path}?{query.decode('latin-1')}" if query else path
    return [
        f"{scheme}://{netloc}{suffix}"
        for scheme in (("wss", "https") if secure else ("ws", "http"))
        for netloc in netlocs
    ]


def _validators(settings: Settings, headers: Mapping[str, str]) -> tuple[list[RequestValidator], str]:
    algorithm = get_signature_algorithm(headers.get(SIGNATURE_SETTINGS_HEADER))
    keys = [settings.secret("twilio_auth_token")]
    if SIGNATURE_SETTINGS_HEADER in headers:
        # Signed with a webhook SharedKey secret when one is configured; the auth token otherwise.
        keys.insert(0, settings.secret("twilio_webhook_key"))
    return [RequestValidator(key) for key in keys if key], algorithm


def valid_signature(settings: Settings, urls: list[str], params: Any, headers: Mapping[str, str]) -> bool:
    """True when the request's X-Twilio-Signature matches one of `urls` (the forms Twilio may sign)."""
    signature = headers.get(SIGNATURE_HEADER)
    if not signature or not webhook_configured(settings):
        return False
    validators, algorithm = _validators(settings, headers)
    return any(v.validate(url, params, signature, algorithm) for v in validators for url in urls)
