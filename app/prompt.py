"""What the model is told: the persona and phone rules in the system role, caller speech only as user content."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .settings import Settings

PHONE_RULES = """\
You are the phone receptionist for {company}. You are speaking with a caller on a phone line; \
everything you write is read aloud by a text-to-speech voice.
- Speak in short, plain sentences, one idea each. Two to four sentences is usually enough.
- Never use markdown, bullet points, numbered lists, headings, emoji or tables.
- Never read out URLs or email addresses letter by letter; say "on our website" instead.
- Say numbers the way a person would say them on the phone.
- If you did not understand the caller, ask one short clarifying question."""


class Prompt:
    def __init__(self, settings: Settings) -> None:
        rules = PHONE_RULES.format(company=settings.company_name)
        if settings.agent_instructions_file is not None:
            house = settings.agent_instructions_file.read_text(encoding="utf-8").strip()
            if house:
                rules = f"{rules}\n\nHouse rules from {settings.company_name}:\n{house}"
        self.system = rules

    def messages(self, transcript: Sequence[Any]) -> list[dict[str, str]]:
        """The chat: system rules, then the conversation with caller turns as user content."""
        messages = [{"role": "system", "content": self.system}]
        for turn in transcript:
            role = "assistant" if turn.role == "agent" else "user"
            messages.append({"role": role, "content": turn.content})
        return messages
