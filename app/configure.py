"""`python -m app.configure [--dry-run]` (`make configure`): point ElevenLabs and Twilio at this server.

- The Speech Engine (SPEECH_ENGINE_ID) gets phone audio (ulaw_8000 in and out, the eleven_flash_v2
  voice model), `ws_url` = wss://<public host>/ws, request headers carrying SHARED_SECRET as
  `x-api-key` and the call SID dynamic variable (sent by the bridge) as `x-call-sid`, the
  CASCADE_TIMEOUT_SECONDS the brain speaks within, and, when GREETING is set, permission for the
  call to override its first message (the greeting). It reads the engine back and says plainly if
  that permission must be given by hand.
- The Twilio number (TWILIO_PHONE_NUMBER) sends its voice webhook to <PUBLIC_URL>/incoming-call
  (POST), and falls back to the Connect action route (apology, then FALLBACK_NUMBER) if that fails.

Both go through the vendors' SDKs. It reads the current configuration first and changes only what
differs, so running it twice changes nothing; `--dry-run` prints the same list without changing it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elevenlabs import AsrConversationalConfig, SpeechEngineConfig, TtsConversationalConfigInput
from elevenlabs.client import ElevenLabs

from app.settings import Settings, load_settings
from app.speech_engine_contract import BRAIN_PATH, CALL_SID_HEADER, SECRET_HEADER, request_headers
from app.telephony.elevenlabs_frames import PHONE_FORMAT
from app.telephony.signatures import public_url, stream_url
from app.telephony.twilio_rest import rest_client
from app.telephony.webhook import ACTION_PATH, INCOMING_PATH

VOICE_MODEL = "eleven_flash_v2"
_SECRET = "(SHARED_SECRET)"

Print = Callable[[str], None]


@dataclass(frozen=True)
class Change:
    field: str
    old: object
    new: object

    def __str__(self) -> str:
        return f"  {self.field}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: object) -> str:
    """Placeholders like (SHARED_SECRET) stand for secrets, which are never printed."""
    if value is None:
        return "(unset)"
    return value if isinstance(value, str) and value.startswith("(") else repr(value)


def _missing(settings: Settings, names: list[str]) -> list[str]:
    return [name.upper() for name in names if getattr(settings, name) in (None, "")]


# --- the Speech Engine ------------------------------------------------------------------------


def engine_plan(settings: Settings, current: dict[str, Any]) -> tuple[list[Change], dict[str, Any]]:
    """What differs from the phone setup, and the update that fixes it (whole sub-objects, merged,
    so fields we do not manage survive whether PATCH merges or replaces them)."""
    secret = settings.secret("shared_secret")
    engine = dict(current.get("speech_engine") or {})
    asr = dict(current.get("asr") or {})
    tts = dict(current.get("tts") or {})
    headers = dict(engine.get("request_headers") or {})
    wanted_headers = request_headers(secret)
    changes: list[Change] = []

    ws_url = stream_url(settings, BRAIN_PATH)
    if engine.get("ws_url") != ws_url:
        changes.append(Change("speech_engine.ws_url", engine.get("ws_url"), ws_url))
    if headers.get(SECRET_HEADER) != secret:
        old = "(another value)" if headers.get(SECRET_HEADER) is not None else None
        changes.append(Change(f"speech_engine.request_headers.{SECRET_HEADER}", old, _SECRET))
    call_sid = wanted_headers[CALL_SID_HEADER]
    if headers.get(CALL_SID_HEADER) != call_sid:
        changes.append(
            Change(f"speech_engine.request_headers.{CALL_SID_HEADER}", headers.get(CALL_SID_HEADER), call_sid)
        )
    for section, values, name, wanted in (
        ("asr", asr, "user_input_audio_format", PHONE_FORMAT),
        ("tts", tts, "agent_output_audio_format", PHONE_FORMAT),
        ("tts", tts, "model_id", VOICE_MODEL),
    ):
        if values.get(name) != wanted:
            changes.append(Change(f"{section}.{name}", values.get(name), wanted))

    headers.update(wanted_headers)
    update: dict[str, Any] = {
        "speech_engine": SpeechEngineConfig(**{**engine, "ws_url": ws_url, "request_headers": headers}),
        "asr": AsrConversationalConfig(**{**asr, "user_input_audio_format": PHONE_FORMAT}),
        "tts": TtsConversationalConfigInput(
            **{**tts, "agent_output_audio_format": PHONE_FORMAT, "model_id": VOICE_MODEL}
        ),
    }
    # The SDK's update() has parameters for neither of these: they go as extra body fields.
    extra: dict[str, Any] = {}
    timeout = settings.cascade_timeout_seconds
    if current.get("cascade_timeout_seconds") != timeout:
        changes.append(Change("cascade_timeout_seconds", current.get("cascade_timeout_seconds"), timeout))
        extra["cascade_timeout_seconds"] = timeout
    overrides = dict(current.get("overrides") or {})
    if settings.first_message and overrides.get("first_message") is not True:
        changes.append(Change("overrides.first_message", overrides.get("first_message"), True))
        extra["overrides"] = {**overrides, "first_message": True}
    if extra:
        update["request_options"] = {"additional_body_parameters": extra}
    return changes, update


def _first_message_allowed(config: Any) -> bool:
    return getattr(getattr(config, "overrides", None), "first_message", None) is True


def configure_engine(settings: Settings, dry_run: bool, say: Print) -> bool:
    missing = _missing(settings, ["elevenlabs_api_key", "speech_engine_id", "public_url", "shared_secret"])
    if missing:
        say(f"Speech Engine: skipped, set {', '.join(missing)}")
        return False
    engine_id = settings.speech_engine_id
    assert engine_id is not None
    kwargs = {"base_url": settings.elevenlabs_base_url} if settings.elevenlabs_base_url else {}
    client = ElevenLabs(api_key=settings.secret("elevenlabs_api_key"), timeout=15, **kwargs)
    try:
        engine = client.speech_engine.get(engine_id)
        # The SDK wraps the GET response in a resource object; the API fields are on `.config`.
        config = getattr(engine, "config", engine)
        current = config.model_dump(mode="json", exclude_none=True)
        changes, update = engine_plan(settings, current)
        say(f"Speech Engine {engine_id}:")
        _report(changes, dry_run, say)
        if changes and not dry_run:
            client.speech_engine.update(engine_id, **update)
        if (
            settings.first_message
            and not dry_run
            and not _first_message_allowed(client.speech_engine.get(engine_id).config)
        ):
            say(
                f"  set once by hand: the engine did not accept the first-message override through the API. In "
                f"ElevenLabs, allow overrides of the first message for {engine_id} (or set GREETING= for no "
                "greeting); until then calls start without the greeting."
            )
    except Exception as exc:
        say(f"Speech Engine {engine_id}: {_failure(exc)}")
        return False
    return True


# --- the Twilio number -----------------------------------------------------------------------


def number_plan(settings: Settings, number: Any) -> tuple[list[Change], dict[str, str]]:
    wanted = {
        "voice_url": public_url(settings, INCOMING_PATH),
        "voice_method": "POST",
        "voice_fallback_url": public_url(settings, ACTION_PATH),
        "voice_fallback_method": "POST",
    }
    changes = [Change(name, getattr(number, name, None), value) for name, value in wanted.items()]
    changes = [change for change in changes if change.old != change.new]
    return changes, {change.field: str(change.new) for change in changes}


def configure_number(settings: Settings, dry_run: bool, say: Print) -> bool:
    missing = _missing(settings, ["twilio_account_sid", "twilio_auth_token", "twilio_phone_number", "public_url"])
    if missing:
        say(f"Twilio number: skipped, set {', '.join(missing)}")
        return False
    phone = settings.twilio_phone_number
    client = rest_client(settings)
    try:
        found = client.incoming_phone_numbers.list(phone_number=phone, limit=2)
        if len(found) != 1:
            say(f"Twilio number {phone}: not a number of account {settings.twilio_account_sid}")
            return False
        number = found[0]
        changes, update = number_plan(settings, number)
        say(f"Twilio number {phone} ({number.sid}):")
        _report(changes, dry_run, say)
        if changes and not dry_run:
            client.incoming_phone_numbers(number.sid).update(**update)
    except Exception as exc:
        say(f"Twilio number {phone}: {_failure(exc)}")
        return False
    return True


# --- the command -----------------------------------------------------------------------------


def _report(changes: list[Change], dry_run: bool, say: Print) -> None:
    if not changes:
        say("  already set: nothing to change")
        return
    for change in changes:
        say(str(change))
    say("  (dry run: nothing changed)" if dry_run else "  updated")


def _failure(exc: Exception) -> str:
    """One line a person can act on, without echoing anything secret back."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if status in (401, 403):
        return f"refused (HTTP {status}): check the API key / account SID and auth token"
    if status == 404:
        return "not found (HTTP 404): check the id / number"
    if status:
        return f"failed (HTTP {status})"
    return f"could not reach the API ({type(exc).__name__})"


def run(settings: Settings, *, dry_run: bool, say: Print = print) -> int:
    engine_ok = configure_engine(settings, dry_run, say)
    number_ok = configure_number(settings, dry_run, say)
    return 0 if engine_ok and number_ok else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.configure",
        description="Point the Speech Engine and the Twilio number at this server (PUBLIC_URL).",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args(argv)
    sys.exit(run(load_settings(), dry_run=args.dry_run))


if __name__ == "__main__":
    main()
