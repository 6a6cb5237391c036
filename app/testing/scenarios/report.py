"""A run's report: text for people, one JSON document for machines, JUnit XML for CI.

A failing expectation shows what was expected and what the agent said or did instead, then the
whole call: each caller line (and what speech recognition made of it, with noise), the agent's
answer, its timing, tools, sources, gap and messages, and how the call ended.

In JUnit each scenario is a test case: a failure, an error (the call could not be played through),
or skipped (an expected failure, `xfail:`; or nothing could be checked, e.g. only a `judge:` and
no model).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.testing.scenarios.checks import ScenarioResult
from app.testing.scenarios.runner import CallSeen
from app.testing.scenarios.suite import Run

STATUSES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
LABELS = {
    "passed": "PASS",
    "failed": "FAIL",
    "error": "ERROR",
    "skipped": "SKIP",
    "xfailed": "XFAIL",
    "xpassed": "XPASS",
}


def counts(run: Run) -> dict[str, int]:
    found = {status: 0 for status in STATUSES}
    for result in run.results:
        found[result.status] += 1
    return found


def scenarios(count: int) -> str:
    return f"{count} scenario{'' if count == 1 else 's'}"


def progress(result: ScenarioResult) -> str:
    """One line as a scenario ends."""
    scenario = result.scenario
    skipped = sum(check.verdict == "skipped" for check in result.checks)
    note = f", {skipped} skipped" if skipped and result.status != "skipped" else ""
    line = f"{LABELS[result.status]:<5} {scenario.name}  ({scenario.where}, {result.call.seconds:.1f} s{note})"
    return f"{line}: {scenario.xfail}" if result.status == "xfailed" else line


def text(run: Run) -> str:
    lines: list[str] = []
    for result in run.results:
        if result.status in ("failed", "error", "xpassed"):
            lines += ["", *details(result)]
    skipped = [check for result in run.results for check in result.checks if check.verdict == "skipped"]
    if skipped:
        reasons = sorted({check.got for check in skipped})
        lines += ["", f"{len(skipped)} expectation(s) {'; '.join(reasons)}"]
    found = counts(run)
    summary = ", ".join(f"{found[status]} {status}" for status in STATUSES if found[status])
    noise = f", ASR noise {run.noise.rate} (seed {run.noise.seed})" if run.noise else ""
    lines += [
        "",
        f"{scenarios(len(run.results))} in {run.seconds:.1f} s (-j {run.jobs}, answers from {run.answers_from}"
        f"{noise}): {summary or 'none'}",
    ]
    return "\n".join(lines)


def details(result: ScenarioResult) -> list[str]:
    """Why a scenario did not simply pass, and the whole call."""
    scenario = result.scenario
    lines = [f"── {LABELS[result.status]}: {scenario.name} ({scenario.where})"]
    if result.status == "xpassed":
        lines.append(f"   passed, though marked to fail ({scenario.xfail}): remove its `xfail:`")
    elif scenario.xfail is not None:
        lines.append(f"   expected to fail: {scenario.xfail}")
    if result.call.error is not None:
        lines.append(f"   the call failed: {result.call.error}")
    for check in result.checks:
        if check.verdict == "passed":
            continue
        label = "expected" if check.verdict == "failed" else "skipped"
        lines.append(f"   turn {check.turn}, {check.what}: {label} {check.expected}")
        lines.append(f"      got: {check.got}")
    lines.append(f"   the call ({result.call.call_sid}):")
    lines += [f"   {line}" for line in transcript(result.call)]
    return lines


def transcript(call: CallSeen) -> list[str]:
    lines = []
    for turn in call.turns:
        lines.append(f"  caller> {turn.said}")
        if turn.heard != turn.said:
            lines.append(f"          (heard as: {turn.heard})")
        did = []
        if turn.first_words_ms is not None:
            did.append(f"first words {turn.first_words_ms:.0f} ms")
        did += [f"{t.get('tool')} ({t.get('decision')})" for t in turn.tools]
        if turn.gap:
            did.append("knowledge gap")
        did += [f"message saved: {message}" for message in turn.messages]
        if turn.sources:
            did.append(f"read {', '.join(turn.sources)}")
        lines.append(f"  agent>  {turn.agent or '(nothing)'}")
        if did:
            lines.append(f"          [{' · '.join(did)}]")
    lines.append(f"  ── {call.ending}")
    return lines


def document(run: Run) -> dict[str, Any]:
    return {
        "summary": {"scenarios": len(run.results), **counts(run), "seconds": round(run.seconds, 2)},
        "answers_from": run.answers_from,
        "jobs": run.jobs,
        "asr_noise": {"rate": run.noise.rate, "seed": run.noise.seed} if run.noise else None,
        "scenarios": [_scenario(result) for result in run.results],
    }


def _scenario(result: ScenarioResult) -> dict[str, Any]:
    scenario = result.scenario
    return {
        "name": scenario.name,
        "file": str(scenario.file),
        "line": scenario.line,
        "status": result.status,
        "xfail": scenario.xfail,
        "caller": scenario.caller,
        "at": scenario.at.isoformat() if scenario.at else None,
        "checks": [check.to_json() for check in result.checks],
        "call": result.call.to_json(),
    }


def json_text(run: Run) -> str:
    return json.dumps(document(run), indent=2, ensure_ascii=False)


def junit(run: Run) -> bytes:
    found = counts(run)
    totals = {
        "tests": str(len(run.results)),
        "failures": str(found["failed"]),
        "errors": str(found["error"]),
        "skipped": str(found["skipped"] + found["xfailed"]),
        "time": f"{run.seconds:.3f}",
    }
    root = ET.Element("testsuites", name="call scenarios", **totals)
    suite = ET.SubElement(
        root,
        "testsuite",
        name="call scenarios",
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        **totals,
    )
    for result in run.results:
        scenario = result.scenario
        case = ET.SubElement(
            suite,
            "testcase",
            classname=".".join(Path(scenario.file).with_suffix("").parts),
            name=scenario.name,
            file=str(scenario.file),
            line=str(scenario.line),
            time=f"{result.call.seconds:.3f}",
        )
        body = "\n".join(details(result))
        failures = result.failures
        first = f"turn {failures[0].turn}, {failures[0].what}: expected {failures[0].expected}" if failures else ""
        if result.status == "failed":
            ET.SubElement(case, "failure", message=first, type="expectation").text = body
        elif result.status == "error":
            ET.SubElement(case, "error", message=result.call.error or "", type="call").text = body
        elif result.status == "xfailed":
            ET.SubElement(case, "skipped", message=f"expected to fail: {scenario.xfail}").text = body
        elif result.status == "skipped":
            ET.SubElement(case, "skipped", message="nothing could be checked").text = body
        ET.SubElement(case, "system-out").text = "\n".join(transcript(result.call))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
