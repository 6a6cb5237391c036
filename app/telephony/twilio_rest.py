"""The twilio REST client, built from settings alone (never the process environment).

`TWILIO_API_BASE_URL` points the Api domain at a regional edge or a local stand-in.
"""

from __future__ import annotations

from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from app.settings import Settings

REST_TIMEOUT_S = 10.0


def rest_client(settings: Settings, http_client: HttpClient | None = None) -> Client:
    client = Client(
        settings.twilio_account_sid,
        settings.secret("twilio_auth_token"),
        http_client=http_client or TwilioHttpClient(timeout=REST_TIMEOUT_S),
        environment={},
    )
    if settings.twilio_api_base_url:
        client.api.base_url = settings.twilio_api_base_url.rstrip("/")
    return client
