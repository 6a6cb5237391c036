"""Call scenario files (`python -m app test-calls`): the format the issue fixes is read exactly,
every mistake is refused with its file and line; the ASR noise is deterministic and changes words;
a call's clock runs from the scenario's `at:`."""

from __future__ import annotations

import itertools
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.clock import CallClock
from app.testing.scenarios.files import Expect, MessageExpected, find, load
from app.testing.scenarios.noise import AsrNoise
from tests.support.make_call import run
from tests.support.paths import CALLS

# The issue's example, exactly as users will write it.
EXAMPLE = """\
name: autopay discount, then sales
caller: "+12125550123"            # optional; the caller's number
at: "2026-12-08T10:30:00-05:00"   # optional; the clock for the scenario (opening hours)
turns:
  - say: how much is the autopay discount?
    expect:
      says_any: ["$5", "five dollars"]     # at least one of these, case-insensitive
      says_all: ["autopay"]                # every one of these
      not_says: ["I don't know"]
      sources: [billing/payments.md]       # among the passages the answer read
      first_words_ms: 1500                 # the agent's first words within this
  - say: can I talk to someone in sales?     # a transfer or a goodbye ends the call: the last turn
    expect:
      tool: transfer_call
      department: sales
"""


def write(tmp_path: Path, text: str, name: str = "calls.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    loaded = load([write(tmp_path, text)])
    assert not loaded.scenarios
    return [str(error) for error in loaded.errors]


def test_the_issue_example_reads_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    loaded = load([path])
    assert loaded.errors == []
    [scenario] = loaded.scenarios
    assert scenario.name == "autopay discount, then sales" and scenario.caller == "+12125550123"
    assert scenario.at == datetime.fromisoformat("2026-12-08T10:30:00-05:00")
    assert scenario.where == f"{path}:1"
    first, second = scenario.turns
    assert first.say == "how much is the autopay discount?" and first.line == 5
    assert first.expect == Expect(
        says_any=("$5", "five dollars"),
        says_all=("autopay",),
        not_says=("I don't know",),
        sources=("billing/payments.md",),
        first_words_ms=1500,
    )
    assert second.expect == Expect(tool="transfer_call", department="sales")


def test_the_other_expectations_and_several_scenarios_in_one_file(tmp_path: Path) -> None:
    loaded = load(
        [
            write(
                tmp_path,
                "name: one\nturns:\n  - say: hi\n---\n"
                "name: two\nturns:\n  - say: leave a message\n    expect:\n      gap: false\n"
                "      message: {name: Ana Ruiz, callback_number: 212 867 5309, department: billing}\n"
                "      judge: takes the message\n",
            )
        ]
    )
    assert loaded.errors == []
    one, two = loaded.scenarios
    assert one.turns[0].expect == Expect() and two.line == 5
    assert two.turns[0].expect == Expect(
        gap=False,
        message=MessageExpected("Ana Ruiz", "212 867 5309", "billing"),
        judge="takes the message",
    )


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("name: x\nturns:\n  - say: hi\n    expect:\n      say_any: [a]\n", 5, "unknown key `say_any` in `expect`"),
        ("name: x\ncolour: red\nturns:\n  - say: hi\n", 2, "unknown key `colour` in a scenario"),
        ("name: x\nturns:\n  - say: hi\n    expects: {}\n", 4, "unknown key `expects` in a turn"),
        ("name: x\nturns:\n  - say: hi\n    expect:\n      message: {phone: 1}\n", 5, "unknown key `phone`"),
        ("name: x\nturns:\n  - say: hi\n    expect:\n      gap: maybe\n", 5, "`gap` must be true or false"),
        ("name: x\nturns:\n  - say: hi\n    expect:\n      first_words_ms: fast\n", 5, "milliseconds"),
        ("name: x\nturns:\n  - say: hi\n    expect:\n      tool: refund\n", 5, "not one of the agent's tools"),
        ("name: x\ncaller: 12345\nturns:\n  - say: hi\n", 2, "not an E.164 number"),
        ('name: x\nat: "2026-12-08 10:30"\nturns:\n  - say: hi\n', 2, "with its UTC offset"),
        ("name: x\nturns:\n  - expect: {gap: true}\n", 3, "`say` is missing"),
        ("name: x\nturns: []\n", 2, "`turns` must be a list"),
        ("turns:\n  - say: hi\n", 1, "`name` is missing"),
        ("name: x\nturns:\n  - say: hi\n  - say: [oops\n", 5, "not valid YAML"),
        ("name: x\nname: y\nturns:\n  - say: hi\n", 2, "`name` is given twice"),
        (
            "name: x\nturns:\n  - say: sales please\n    expect: {department: sales}\n  - say: hi\n",
            3,
            "can only be the last turn",
        ),
    ],
)
def test_a_malformed_file_is_refused_with_its_file_and_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    found = errors(tmp_path, text)
    assert found, "refused"
    assert found[0].startswith(f"{tmp_path / 'calls.yaml'}:{line}: ") and says in found[0], found


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    loaded = load([tmp_path / "nope.yaml"])
    assert [str(e) for e in loaded.errors] == [
        f"{tmp_path / 'nope.yaml'}: cannot be read: [Errno 2] No such file or directory: '{tmp_path / 'nope.yaml'}'"
    ]


def test_a_misspelt_key_gets_a_suggestion(tmp_path: Path) -> None:
    [error] = errors(tmp_path, "name: x\nturns:\n  - say: hi\n    expect:\n      says_al: [a]\n")
    assert error.endswith("did you mean `says_all`?")


def test_every_mistake_is_listed_and_names_are_unique_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "name: same\nturns:\n  - say: hi\n", "a.yaml")
    text = "name: same\nturns:\n  - say: hi\n---\nname: bad\nturns:\n  - say: hi\n    expect: {gap: 1}\n"
    second = write(tmp_path, text, "b.yaml")
    loaded = load(find([tmp_path]))
    assert [s.file for s in loaded.scenarios] == [first]
    assert [str(e) for e in loaded.errors] == [
        f"{second}:1: the name 'same' is already used at {first}:1",
        f"{second}:8: `gap` must be true or false",
    ]


async def test_the_command_refuses_a_malformed_file_before_calling(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nturns:\n  - say: hi\n    expect:\n      department: sales\n      colour: red\n")
    code, out, err = await run(tmp_path, sys.executable, "-m", "app", "test-calls", str(path), timeout=60)
    assert code == 2 and out == ""
    known = ", ".join(Expect.__dataclass_fields__)
    assert err.strip() == f"{path}:6: unknown key `colour` in `expect` (known: {known})"
    assert not (tmp_path / ".env").exists() and not (tmp_path / "data").exists()  # nothing was started


def test_the_shipped_suite_is_well_formed_and_large_enough() -> None:
    loaded = load(find([CALLS]))
    assert loaded.errors == []
    assert len(loaded.scenarios) >= 25
    expected = [step.expect for scenario in loaded.scenarios for step in scenario.turns]
    # Answers, abstention with a gap, transfers, messages, goodbye: each kind is there.
    assert any(e.sources for e in expected) and any(e.gap for e in expected)
    assert any(e.department for e in expected) and any(e.message for e in expected)
    assert any(e.tool == "end_call" for e in expected)


LINES = [
    "how much is the autopay discount?",
    "my name is Ana Ruiz, call me back at 212 867 5309 about a double charge",
    "I'd like to talk to someone in sales, there are four of us here, right?",
    "can I get five dollars off for two weeks",
]


def test_the_same_seed_gives_the_same_noise_and_the_noise_changes_words() -> None:
    noise = AsrNoise(0.3, seed=7)
    heard = [noise.hear(line, "a scenario", n) for n, line in enumerate(LINES, 1)]
    assert heard == [AsrNoise(0.3, seed=7).hear(line, "a scenario", n) for n, line in enumerate(LINES, 1)]
    assert heard != [AsrNoise(0.3, seed=8).hear(line, "a scenario", n) for n, line in enumerate(LINES, 1)]
    for line, said in zip(LINES, heard, strict=True):
        assert not any(mark in said for mark in ",?."), said  # no punctuation
        assert said.split() != line.replace(",", " ").replace("?", " ").split(), said  # words changed
    assert AsrNoise(0.0, seed=7).hear(LINES[0], "a scenario", 1) == LINES[0]


def test_the_noise_is_what_speech_recognition_does() -> None:
    changes: set[str] = set()
    for seed in range(200):
        said = "I want to pay 5 dollars for two weeks"
        heard = AsrNoise(0.5, seed).hear(said, "x", 1).split()
        words = said.split()
        if len(heard) < len(words):
            changes.add("dropped")
        if any(a == b for a, b in itertools.pairwise(heard)):
            changes.add("doubled")
        if {"four", "too", "2"} & set(heard):
            changes.add("homophone or number")
        if "five" in heard:
            changes.add("digits as words")
    assert changes == {"dropped", "doubled", "homophone or number", "digits as words"}


def test_a_call_clock_runs_on_from_its_scenario_time() -> None:
    clock = CallClock()
    at = datetime.fromisoformat("2026-12-08T22:30:00-05:00")
    clock.set("CA1", at)
    assert timedelta(0) <= clock.now("CA1") - at < timedelta(minutes=1)
    assert abs(clock.now("CA2") - datetime.now(at.tzinfo)) < timedelta(minutes=1)  # other calls: wall time
    assert abs(clock.now() - datetime.now(at.tzinfo)) < timedelta(minutes=1)
    clock.forget("CA1")
    assert abs(clock.now("CA1") - datetime.now(at.tzinfo)) < timedelta(minutes=1)
    with pytest.raises(ValueError, match="UTC offset"):
        clock.set("CA1", datetime(2026, 12, 8, 10, 30))
