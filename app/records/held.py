"""Turns redacted before they are written, and held back while a secret may still be going on.

A caller reads a card out in pieces ("my card starts 4012 8888" ... "and ends 8888 1881"): neither
turn alone is a card number, both together are. So a turn whose caller text ends in digits, in a
key word ("my PIN is") or in a password's value waits here, unwritten, until the next turn of its
conversation, and the two are redacted as one text; nothing partial is ever written. A held turn is
let go when its call ends, after HOLD_S, or when the recorder stops or is flushed.
"""

from __future__ import annotations

from dataclasses import replace

from app.records.events import TurnDone
from app.records.redact import could_continue, redact_turns

HOLD_S = 60.0  # far longer than an agent's answer between two turns
MAX_HELD = 6  # turns of one conversation held together at most


def redacted(chain: list[TurnDone]) -> list[TurnDone]:
    """Consecutive turns of one conversation, their texts redacted together."""
    others = [text for turn in chain for text in (turn.agent_text, turn.unanswered or "")]
    said, cleared = redact_turns([turn.caller_text for turn in chain], others)
    out = []
    for i, turn in enumerate(chain):
        unanswered = said[i] if turn.unanswered == turn.caller_text else cleared[2 * i + 1] or None
        out.append(replace(turn, caller_text=said[i], agent_text=cleared[2 * i], unanswered=unanswered))
    return out


class HeldTurns:
    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._chains: dict[str, list[TurnDone]] = {}
        self._until: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(chain) for chain in self._chains.values())

    def add(self, turn: TurnDone, now: float) -> list[TurnDone]:
        """The turns to write now (redacted): none while this one may go on in the next."""
        key = turn.conversation_id or turn.call_sid
        if key is None:
            return redacted([turn])
        chain = self._chains.pop(key, [])
        self._until.pop(key, None)
        chain.append(turn)
        if len(chain) < MAX_HELD and could_continue(turn.caller_text):
            self._chains[key] = chain
            self._until[key] = now + self.hold_s
            return []
        return redacted(chain)

    def call_ended(self, call_sid: str) -> list[TurnDone]:
        return self._release([k for k, chain in self._chains.items() if any(t.call_sid == call_sid for t in chain)])

    def expired(self, now: float) -> list[TurnDone]:
        return self._release([key for key, until in self._until.items() if until <= now])

    def release_all(self) -> list[TurnDone]:
        return self._release(list(self._chains))

    @property
    def next_deadline(self) -> float | None:
        return min(self._until.values(), default=None)

    def _release(self, keys: list[str]) -> list[TurnDone]:
        out: list[TurnDone] = []
        for key in keys:
            self._until.pop(key, None)
            out += redacted(self._chains.pop(key))
        return out
