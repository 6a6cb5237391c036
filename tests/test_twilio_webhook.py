"""POST /incoming-call and the Connect action: signatures, admission, TwiML."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twilio.request_validator import HMAC_SHA256, RequestValidator

from app.calls.control import EndReason
from app.settings import Settings
from app.telephony import call_token
from app.telephony.signatures import valid_signature
from app.telephony.webhook import busy_twiml, connect_twiml, ended_twiml
from app.testing.twilio_caller import TwilioCaller, Webhook
from tests.support.config import PUBLIC_URL, TWILIO_TOKEN


def caller_for(server: Any, **kw: Any) -> TwilioCaller:
    return TwilioCaller(server.http_url, PUBLIC_URL, TWILIO_TOKEN, **kw)


def telephony(server: Any) -> Any:
    return server.app.extensions["switchboard"].telephony


def rejected(server: Any, reason: str) -> float:
    return (
        telephony(server).metrics.registry.get_sample_value("switchboard_twilio_rejected_total", {"reason": reason})
        or 0.0
    )


# --- the verified vector and the signature forms ---------------------------------------------------


def test_signature_matches_the_documented_vector() -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    settings = Settings(_env_file=None, twilio_auth_token="12345", public_url="https://mycompany.com")
    headers = {"X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="}
    assert valid_signature(settings, [url], params, headers)
    assert not valid_signature(settings, [url.replace("foo=1", "foo=2")], params, headers)
    assert not valid_signature(settings, [url], {**params, "Digits": "9"}, headers)
    assert not valid_signature(settings, [url], params, {})


def test_no_auth_token_means_nothing_validates() -> None:
    settings = Settings(_env_file=None, public_url="https://mycompany.com")
    sig = RequestValidator("").compute_signature("https://mycompany.com/x", {})
    assert not valid_signature(settings, ["https://mycompany.com/x"], {}, {"X-Twilio-Signature": sig})


# --- the webhook over real HTTP -----------------------------------------------------------------


async def test_valid_webhook_answers_connect_stream_twiml(serve, phone_settings) -> None:
    async with serve(**phone_settings) as server:
        caller = caller_for(server)
        hook = await caller.dial()
    assert hook.status == 200 and hook.verbs == ["Connect"]
    assert hook.stream_url == "wss://switchboard.example/media-stream"
    assert hook.action_url == f"{PUBLIC_URL}/connect-action"
    assert hook.parameters["caller"] == caller.caller
    key = call_token.derive_key(TWILIO_TOKEN)
    assert call_token.verify(key, hook.parameters["token"], caller.call_sid, caller.caller, time.time())


@pytest.mark.parametrize(
    "how",
    ["bad_signature", "no_signature", "proxy_url", "tampered_form", "other_token", "query_added"],
)
async def test_bad_webhooks_get_403_and_no_call_state(serve, phone_settings, how) -> None:
    async with serve(**phone_settings) as server:
        caller = caller_for(server)
        if how == "bad_signature":
            hook = await caller.dial(signature="bm90IGEgc2lnbmF0dXJl")
        elif how == "no_signature":
            hook = await caller.dial(signature="")
        elif how == "proxy_url":
            # What a naive server would check: the URL the proxy handed it, not the public one.
            hook = await caller.dial(signed_url=f"{server.http_url}/incoming-call")
        elif how == "tampered_form":
            form = caller.form()
            signature = caller.validator.compute_signature(f"{PUBLIC_URL}/incoming-call", form)
            hook = await caller.post(
                f"{PUBLIC_URL}/incoming-call", {**form, "From": "+15550000000"}, signature=signature
            )
        elif how == "other_token":
            hook = await caller.dial(validator=RequestValidator("someone-elses-token"))
        else:
            signature = caller.validator.compute_signature(f"{PUBLIC_URL}/incoming-call", caller.form())
            hook = await caller.post(f"{PUBLIC_URL}/incoming-call?x=1", caller.form(), signature=signature)
        slots = telephony(server).slots
        assert rejected(server, "signature") == 1
    assert hook.status == 403
    assert slots.live == 0 and not slots._reserved


async def test_no_auth_token_configured_refuses_every_webhook(serve, phone_settings) -> None:
    async with serve(**{**phone_settings, "twilio_auth_token": None}) as server:
        hook = await caller_for(server).dial()
    assert hook.status == 403


async def test_signature_settings_variant_with_hmac_sha256(serve, phone_settings) -> None:
    shared_key = "webhook-shared-key-secret"
    header = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
    async with serve(**{**phone_settings, "twilio_webhook_key": shared_key}) as server:
        caller = caller_for(server)
        good = await caller.dial(validator=RequestValidator(shared_key), algorithm=HMAC_SHA256, headers=header)
        sha1 = await caller_for(server).dial(validator=RequestValidator(shared_key), headers=header)
        unknown = await caller_for(server).dial(
            validator=RequestValidator(shared_key),
            algorithm=HMAC_SHA256,
            headers={"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_MD5"},
        )
    assert good.status == 200 and good.verbs == ["Connect"]
    assert sha1.status == 403 and unknown.status == 403


async def test_oversized_body_is_refused_before_it_is_read(serve, phone_settings) -> None:
    async with serve(**phone_settings) as server:
        caller = caller_for(server)
        form = caller.form(Padding="x" * 70_000)
        hook = await caller.post(f"{PUBLIC_URL}/incoming-call", form)
    assert hook.status == 413


async def test_over_the_limit_callers_hear_busy(serve, phone_settings) -> None:
    async with serve(**{**phone_settings, "max_concurrent_calls": 1}) as server:
        first = await caller_for(server).dial()
        again = caller_for(server)
        second = await again.dial()
        busy = rejected(server, "busy")
    assert first.verbs == ["Connect"]
    assert second.status == 200 and second.verbs == ["Say", "Hangup"]
    assert "busy" in second.said[0]
    assert busy == 1


async def test_elevenlabs_not_configured_sends_callers_to_the_fallback(serve, phone_settings) -> None:
    settings = {**phone_settings, "speech_engine_id": None, "fallback_number": "+15550001111"}
    async with serve(**settings) as server:
        hook = await caller_for(server).dial()
    assert hook.verbs == ["Say", "Dial", "Hangup"] and hook.dialled == ["+15550001111"]


async def test_connect_action_needs_a_signature_too(serve, phone_settings) -> None:
    async with serve(**phone_settings) as server:
        caller = caller_for(server)
        await caller.dial()
        forged = await caller.connect_action(signature="bm90IGEgc2lnbmF0dXJl")
        unknown = await caller.connect_action()
    assert forged.status == 403
    # No stream ever reported for this call (e.g. Twilio could not reach /media-stream): never silence.
    assert unknown.verbs == ["Say", "Hangup"] and "Sorry" in unknown.said[0]


# --- TwiML, built by the helper -----------------------------------------------------------------


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, public_url="https://host.example", twilio_auth_token="t", **kw)


def test_connect_twiml_escapes_what_the_caller_sent() -> None:
    hook = Webhook.parse(200, str(connect_twiml(_settings(), '"><Dial>+1900</Dial>', "tok")))
    assert hook.verbs == ["Connect"] and hook.parameters["caller"] == '"><Dial>+1900</Dial>'
    assert hook.dialled == []


@pytest.mark.parametrize(
    ("reason", "fallback", "verbs"),
    [
        (EndReason.CALLER_HUNG_UP, None, ["Hangup"]),
        (EndReason.AGENT_ENDED, "+15550001111", ["Hangup"]),
        (EndReason.REQUESTED, "+15550001111", ["Hangup"]),
        (EndReason.MAX_DURATION, "+15550001111", ["Say", "Hangup"]),
        (EndReason.UPSTREAM_DROPPED, "+15550001111", ["Say", "Dial", "Hangup"]),
        (EndReason.TWILIO_DROPPED, None, ["Say", "Hangup"]),
        (None, "+15550001111", ["Say", "Dial", "Hangup"]),
    ],
)
def test_ended_twiml(reason, fallback, verbs) -> None:
    hook = Webhook.parse(200, str(ended_twiml(_settings(fallback_number=fallback), reason)))
    assert hook.verbs == verbs


def test_busy_twiml_names_the_company() -> None:
    hook = Webhook.parse(200, str(busy_twiml(_settings(company_name="Acme"))))
    assert hook.verbs == ["Say", "Hangup"] and "Acme" in hook.said[0]
