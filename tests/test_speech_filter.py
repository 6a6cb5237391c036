"""What reaches the voice: markdown, links, addresses and emoji never do, and plain text is not delayed."""

from __future__ import annotations

import re

import pytest

from app.brain.speech_filter import SpeechFilter, speakable
from app.testing.fake_openai import Reply
from app.testing.speech_engine import SpeechEngineClient
from tests.support.config import SECRET

MARKUP = re.compile(r"[*#`|\[\]_~>]|https?:|www\.|@|^\s*[-+]\s|\(http", re.MULTILINE)


def run(chunks: list[str]) -> list[str]:
    spoken = SpeechFilter()
    return [spoken.feed(chunk) for chunk in chunks] + [spoken.flush()]


@pytest.mark.parametrize(
    ("chunks", "heard"),
    [
        pytest.param(
            ["Autopay saves *", "*five dollars*", "* a month."], "Autopay saves five dollars a month.", id="bold"
        ),
        pytest.param(["It is _really_ ", "~~not~~ fast."], "It is really not fast.", id="emphasis"),
        pytest.param(
            ["Pay on ", "[our pay", "ment page](https://kest", "relbroadband.com/pay) today."],
            "Pay on our payment page today.",
            id="link-in-three-chunks",
        ),
        pytest.param(
            ["You can:\n", "- pay online\n", "- pay by", " phone\n", "2. or in person"],
            "You can:\npay online\npay by phone\nor in person",
            id="list-markers-at-chunk-starts",
        ),
        pytest.param(
            ["#", "# Paying", " your bill\nIt is due soon."], "Paying your bill\nIt is due soon.", id="heading"
        ),
        pytest.param(
            ["| Plan | Price |\n", "|---|--", "-|\n| Swift Gig ", "| $75 |\n"],
            "Plan, Price\nSwift Gig , $75\n",
            id="table",
        ),
        pytest.param(["```\n", "reboot now\n", "```\nDone."], "reboot now\nDone.", id="code-fence"),
        pytest.param(["Run `restart` then wait."], "Run restart then wait.", id="inline-code"),
        pytest.param(
            ["See https://kestrel", "broadband.com/help or write to help@kestrel.example."],
            "See on our website or write by email.",
            id="url-and-address",
        ),
        pytest.param(["Visit www.kestrelbroadband.com for details."], "Visit our website for details.", id="www"),
        pytest.param(["Great news! 🎉 Your plan ", "is ready ✅."], "Great news!  Your plan is ready .", id="emoji"),
        pytest.param(["Email ", "support", "@kestrel.example today."], "Email support by email today.", id="late-at"),
    ],
)
def test_markup_split_at_awkward_points_never_reaches_the_voice(chunks: list[str], heard: str) -> None:
    assert "".join(run(chunks)) == heard


def test_plain_text_passes_through_unchanged_chunk_for_chunk() -> None:
    chunks = ["Your", " bill", " is", " due", " 21", " days", " after", " the", " statement", " date.", "\n", "Thanks!"]
    assert run(chunks) == [*chunks, ""]


def test_a_first_chunk_is_held_only_when_it_may_be_markup() -> None:
    assert SpeechFilter().feed("Sure") == "Sure"
    assert SpeechFilter().feed("Autopay saves") == "Autopay saves"
    for opening in ("**", "[", "#", "- ", "1", "htt", "|"):
        assert SpeechFilter().feed(opening) == "", opening


def test_speakable_makes_a_whole_text_fit_to_read_aloud() -> None:
    text = "## Fees\n- **Late fee:** $10 ([details](https://x.example/fees))\n| a | b |\nMail us at billing@x.example"
    assert speakable(text) == "Fees Late fee: $10 (details) a, b Mail us by email"


async def test_markdown_from_the_model_is_not_spoken(serve, fake_model) -> None:
    """A model that ignores the prompt and streams markdown in awkward pieces."""
    tokens = ["##", " Autopay\n", "*", "*Autopay*", "*", " takes ", "$5", " off. ", "-", " See ", "[the", " app](",
              "https://kestrel.example/app", ")", " or ", "email", " help@kestrel.example", " 👍"]  # fmt: skip
    fake_model.queue(Reply(tokens=tokens))
    async with (
        serve(openai_base_url=fake_model.base_url, openai_model="fake-model") as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        answer = await client.ask("how much is the autopay discount?")
    assert MARKUP.search(answer.text) is None, answer.text
    assert "Autopay takes $5 off." in answer.text and "See the app" in answer.text and "by email" in answer.text


async def test_the_first_words_go_out_while_the_model_is_still_writing(serve, fake_model) -> None:
    # The model sends one word, then nothing more for a long time: the caller must hear it now.
    fake_model.queue(Reply(tokens=["Sure", ",", " one", " moment."], inter_token_delay=60))
    async with (
        serve(openai_base_url=fake_model.base_url, openai_model="fake-model") as server,
        await SpeechEngineClient.open(f"{server.ws_url}/ws", shared_secret=SECRET) as client,
    ):
        event_id = await client.say("can you check my plan?")
        answer = client.answers[event_id]
        await client.wait_for(lambda: answer.chunks, timeout=10)
        assert answer.chunks == ["Sure"] and not answer.finals
