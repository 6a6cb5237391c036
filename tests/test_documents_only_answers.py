"""Answers with no model: whole sentences from the sample documents that carry the fact asked for."""

from __future__ import annotations

import re

import pytest

from app.brain.small_talk import small_talk
from app.brain.spoken_fallback import spoken_sentences
from app.testing.speech_engine import SpeechEngineClient
from tests.support.config import SECRET

# Questions a caller might ask about the sample company in knowledge/, and the fact the answer must carry.
QUESTIONS = [
    ("how much is the autopay discount?", "$5"),
    ("when is my bill due?", "21 days"),
    ("what's the charge if I never send the router back after I cancel?", "$129"),
    ("what's the charge if I don't return the cable modem?", "$89"),
    ("how much is the paper bill fee?", "$2.50"),
    ("is there a fee if an agent takes my payment over the phone?", "$3"),
    ("what is the late fee?", "$8.50"),
    ("how long until you suspend my service if I don't pay?", "45 days"),
    ("how much does a static IP address cost?", "$12"),
    ("how much is the setup fee for a static IP?", "$25"),
    ("how much does professional installation cost?", "$79"),
    ("how much does seasonal hold cost?", "$7 a month"),
    ("how much is the bundle discount for internet and home phone?", "$10"),
    ("do I need a contract?", "no contract"),
    ("which phones can run the My Kestrel app?", "iOS 16"),
]
MARKUP = re.compile(r"[*#`|\[\]_~>•]|https?:|www\.|\(section|(^|\s)- ")


async def test_a_dozen_questions_get_the_fact_in_plain_sentences(serve) -> None:
    async with (
        serve() as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        answers = [(question, fact, (await client.ask(question)).text) for question, fact in QUESTIONS]
    for question, fact, text in answers:
        assert fact in text, (question, text)
        assert MARKUP.search(text) is None, (question, text)
        assert text[:1].isupper() and text.endswith((".", "!")), (question, text)
        assert not text.startswith("Here's what our information says"), text


def test_headings_questions_and_list_fragments_are_never_answers() -> None:
    passage = (
        "Paying your bill\n\nWhen is my bill due?\n\nPayment is due **21 days** after your statement date "
        "(section 3).\n\nThe paper bill fee is waived if:\n\n- the account holder is 70 or older,\n"
        "- you are on our Accessibility register, or\n- you are on Kestrel Connect Assist.\n\n"
        "Plan | Price\n--- | ---\nSwift Gig | $75 a month\n\nAutopay discount: customers who pay by autopay get "
        "$5 off every monthly bill.\n\n- Fiber\n- Cable\n\nOne-time setup fee ........ $25"
    )
    assert [sentence for sentence, _ in spoken_sentences(passage)] == [
        "Payment is due 21 days after your statement date.",
        "The paper bill fee is waived if the account holder is 70 or older, you are on our Accessibility "
        "register, or you are on Kestrel Connect Assist.",
        "Swift Gig, price $75 a month.",
        "Customers who pay by autopay get $5 off every monthly bill.",
        "One-time setup fee, $25.",
    ]


@pytest.mark.parametrize(
    ("utterance", "chat"),
    [
        ("hello?", True),
        ("thank you so much", True),
        ("okay, great, bye", True),
        ("hello, do you sell phones", False),
        ("thanks, how do I pay my bill", False),
    ],
)
def test_small_talk_is_only_small_talk(utterance: str, chat: bool) -> None:
    assert small_talk(utterance) is chat
