"""`python -m app test-calls` (`make test-calls`): run call scenarios and report.

    python -m app test-calls [FILES…] [--junit report.xml] [--json] [-j N] [--asr-noise P --seed S] [--no-timing]

FILES are scenario files or directories of them (default: calls/). Exit status: 0 when no scenario
failed (an expected failure, `xfail:`, is not one), 1 when one did, 2 when a file is malformed or
names no scenario, 130 when stopped with Ctrl-C. Server logs go to DATA_DIR/test-calls.log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvloop

from app.__main__ import build_index_if_missing
from app.observability import configure_logging
from app.private_files import private_file
from app.settings import ensure_env_file, load_settings
from app.testing.scenarios import report
from app.testing.scenarios.files import find, load
from app.testing.scenarios.noise import AsrNoise
from app.testing.scenarios.suite import run

DEFAULT_DIR = Path("calls")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app test-calls", description="Run call scenarios: whole calls against local stand-ins."
    )
    parser.add_argument("files", nargs="*", type=Path, help="scenario files or directories (default: calls/)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here, for CI")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="calls at a time (default 1)")
    parser.add_argument("--asr-noise", type=float, default=0.0, metavar="P", help="perturb each word with chance P")
    parser.add_argument("--seed", type=int, default=0, help="the noise's seed (default 0)")
    parser.add_argument(
        "--no-timing", action="store_true", help="skip first_words_ms (a CI machine too busy to time calls fairly)"
    )
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    if not 0.0 <= args.asr_noise <= 1.0:
        parser.error("--asr-noise is a chance per word, between 0 and 1")
    files = find(args.files or [DEFAULT_DIR])
    loaded = load(files)
    if loaded.errors or not loaded.scenarios:
        for error in loaded.errors:
            print(error, file=sys.stderr)
        if not loaded.errors:
            print(f"no scenarios in {', '.join(map(str, args.files or [DEFAULT_DIR]))}", file=sys.stderr)
        return 2
    ensure_env_file()
    settings = load_settings()
    noise = AsrNoise(args.asr_noise, args.seed) if args.asr_noise > 0 else None
    with private_file(settings.data_dir / "test-calls.log").open("a", encoding="utf-8") as log_file:
        configure_logging(settings.log_level, settings.log_format, log_file)
        build_index_if_missing(settings)
        if not args.json:
            answers = f"the model {settings.openai_model}" if settings.llm_enabled else "the documents alone"
            print(f"{report.scenarios(len(loaded.scenarios))}, answers from {answers}, -j {args.jobs}", flush=True)
        show = None if args.json else (lambda result: print(report.progress(result), flush=True))
        try:
            suite = run(
                settings, loaded.scenarios, jobs=args.jobs, noise=noise, timing=not args.no_timing, on_result=show
            )
            done = uvloop.run(suite)
        except KeyboardInterrupt:
            print("\n── stopped (Ctrl-C): no report", file=sys.stderr)
            return 130
    print(report.json_text(done) if args.json else report.text(done))
    if args.junit is not None:
        args.junit.write_bytes(report.junit(done))
    return 0 if done.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
