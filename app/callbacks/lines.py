"""What the agent says first on a call-back: to a person, who it is and why it is calling; to a
voicemail, the same and the number to call back on."""

from __future__ import annotations

from app.records.messages import spoken_digits
from app.settings import Settings

ABOUT_CHARS = 120


def about(message: str) -> str:
    """The message, cut at a word within ABOUT_CHARS, as the reason for the call."""
    text = " ".join(message.split()).rstrip(".!?")
    if len(text) <= ABOUT_CHARS:
        return text
    return text[:ABOUT_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def _hello(name: str) -> str:
    first = name.split()[0] if name.split() and name != "there" else ""
    return f"Hi {first}" if first else "Hi"


def opening_line(settings: Settings, name: str, message: str, department: str | None) -> str:
    offer = f" I can put you through to {department} if you'd like." if department else ""
    return (
        f"{_hello(name)}, this is the {settings.company_name} assistant returning your call about your message: "
        f"{about(message)}.{offer} How can I help?"
    )


def voicemail_line(settings: Settings, name: str, message: str) -> str:
    back = (
        f" Please call us back on {spoken_digits(settings.twilio_phone_number)}."
        if settings.twilio_phone_number
        else " Please call us back."
    )
    return (
        f"{_hello(name)}, this is the {settings.company_name} assistant returning your call about your message: "
        f"{about(message)}.{back} Goodbye."
    )
