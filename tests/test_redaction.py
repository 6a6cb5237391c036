"""Redaction as people speak: every spoken secret of the variant set is caught whole, every innocent
look-alike survives unchanged, and a turn that may be half a secret is never written alone."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from app.brain.sanitise import CALLER_QUOTE_PREFIX
from app.records.events import TurnDone
from app.records.held import HeldTurns
from app.records.redact import CARD, REDACTED, SSN, could_continue, redact, redact_turns
from tests.support.redaction_cases import LOOKALIKES, SECRETS, pieces


def left_over(turns: tuple[str, ...], secrets: tuple[str, ...]) -> list[str]:
    """The words of the secrets still there after redaction."""
    out, _ = redact_turns(turns)
    said, kept = " ".join(turns), " ".join(out)
    return [word for word in pieces(secrets, said) if re.search(rf"\b{re.escape(word)}\b", kept)]


def test_the_variant_set_is_large_enough_and_well_formed() -> None:
    assert len(SECRETS) >= 40 and len(LOOKALIKES) >= 40
    for turns, secrets in SECRETS:
        said = " ".join(turns)
        assert all(secret in said for secret in secrets), turns
        assert pieces(secrets, said), turns  # something to take away


def test_every_secret_is_caught_whole_and_every_look_alike_survives() -> None:
    caught = sum(not left_over(turns, secrets) for turns, secrets in SECRETS)
    changed = sum(redact_turns(turns)[0] != list(turns) for turns in LOOKALIKES)
    precision = caught / (caught + changed) if caught + changed else 0.0
    recall = caught / len(SECRETS)
    print(f"\nredaction on {len(SECRETS)} secrets and {len(LOOKALIKES)} look-alikes: "
          f"precision {precision:.3f}, recall {recall:.3f}")  # fmt: skip
    assert recall == 1.0, [(t, left_over(t, s)) for t, s in SECRETS if left_over(t, s)]
    assert precision == 1.0, [t for t in LOOKALIKES if redact_turns(t)[0] != list(t)]


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("my PIN is four three two one", f"my PIN is {REDACTED}"),
        ("my password is correct horse battery staple", f"my password is {REDACTED}"),
        ("the password is, uh, swordfish9", f"the password is, uh, {REDACTED}"),
        ("ssn 078051120", f"ssn {SSN}"),
        ("card 4111 dash 1111 dash 1111 dash 1111", f"card {CARD}"),
        ("my password is hunter2 and I can't log in", f"my password is {REDACTED} and I can't log in"),
    ],
)
def test_the_whole_secret_goes_and_the_rest_of_the_sentence_stays(said: str, expected: str) -> None:
    assert redact(said) == expected


def test_the_sanitisers_marker_is_not_kept() -> None:
    assert redact(f"{CALLER_QUOTE_PREFIX}System - my name is Bob") == "System - my name is Bob"


def test_the_sanitisers_marker_is_never_read_out() -> None:
    from app.brain.speech_filter import SpeechFilter
    from app.brain.tools.take_message import _name

    spoken = SpeechFilter()
    said = spoken.feed("Thank you, [caller's ") + spoken.feed("words] Sam. What number") + spoken.flush()
    assert said == "Thank you, Sam. What number"
    assert _name(f"{CALLER_QUOTE_PREFIX}my name is System - Sam") == "System - Sam"


def test_redaction_is_stable_on_its_own_output() -> None:
    for turns, _ in SECRETS:
        once, _ = redact_turns(turns)
        assert redact_turns(once)[0] == once


def test_what_the_agent_repeats_of_a_secret_is_cleared_too() -> None:
    said, others = redact_turns(["my card starts 4012 8888", "and ends 8888 1881"], ["so 4012 8888...", "order 55"])
    assert said == [f"my card starts {CARD}", CARD]
    assert others == [f"so {REDACTED}...", "order 55"]


@pytest.mark.parametrize(
    ("said", "continues"),
    [
        ("my card starts 4012 8888", True),
        ("my PIN is", True),
        ("my password is correct horse", True),
        ("it's four one one one, uh", True),
        ("how much is autopay?", False),
        ("my card starts with a four, right?", False),
        ("I forgot my password", True),
    ],
)
def test_a_turn_that_may_go_on_is_known(said: str, continues: bool) -> None:
    assert could_continue(said) is continues


def turn(said: str, conversation: str = "conv_1", agent: str = "Go on.", **kw: object) -> TurnDone:
    return TurnDone("CA" + "1" * 32, conversation, 1, datetime.now(UTC), said, agent, False, "answered", None, None,
                    [], {}, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_turn_ending_in_digits_waits_for_the_next_one_and_both_are_redacted_together() -> None:
    held = HeldTurns(hold_s=60)
    assert held.add(turn("my card starts 4012 8888", unanswered="my card starts 4012 8888"), now=0) == []
    assert len(held) == 1
    assert held.add(turn("how much is autopay?", conversation="conv_2"), now=1)[0].caller_text == "how much is autopay?"
    assert held.add(turn("and ends 8888 1881", agent="Thanks, I have 8888 1881."), now=2) == []  # it may go on
    first, second, third = held.add(turn("that's all"), now=3)
    assert (first.caller_text, second.caller_text, third.caller_text) == (f"my card starts {CARD}", CARD, "that's all")
    assert first.unanswered == first.caller_text and second.agent_text == f"Thanks, I have {REDACTED}."
    assert len(held) == 0


def test_a_held_turn_is_let_go_when_its_call_ends_or_its_time_is_up() -> None:
    held = HeldTurns(hold_s=60)
    held.add(turn("my number is 415 555 0123"), now=0)
    held.add(turn("order 5237 4401", conversation="conv_2"), now=10)
    assert held.next_deadline == 60
    assert held.expired(now=59) == []
    (gone,) = held.expired(now=60)
    assert gone.caller_text == "my number is 415 555 0123"
    (ended,) = held.call_ended("CA" + "1" * 32)
    assert ended.caller_text == "order 5237 4401" and len(held) == 0
