"""`python -m app`: serve Switchboard with Hypercorn on PORT; `calls`, `gaps`, `messages`: read the records;
`notify test`: try the webhooks and e-mail; `test-calls`: run call scenarios against local stand-ins."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop

from app import create_app
from app.departments.config import DepartmentsError, load_departments, refusal
from app.knowledge.store import build_state
from app.notify import cli as notify_cli
from app.observability import configure_logging
from app.private_files import owner_only
from app.records import cli
from app.records.analyses import NEED_MET
from app.records.messages import parse_since
from app.serving.server import serve_until_drained
from app.serving.workers import supervise
from app.settings import Settings, ensure_env_file, load_settings
from ingest.pipeline import run_ingest

log = logging.getLogger("switchboard")


def build_index_if_missing(settings: Settings) -> None:
    """First run: build the index from the sample (or your) documents so the agent can answer."""
    if build_state(settings).pointer().live is None and settings.knowledge_dir.is_dir():
        log.info("no index yet: building one from %s (once)", settings.knowledge_dir)
        print(run_ingest(settings, progress=True).human(), file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Switchboard: an AI phone agent server.")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
    commands = parser.add_subparsers(dest="command", title="commands (default: serve)")
    serving = commands.add_parser("serve", help="serve on PORT (the default)")
    serving.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a worker, on its supervisor's socket
    calls = commands.add_parser("calls", help="recorded calls, newest first; `calls show CALL_SID` for one call")
    calls.add_argument("show", nargs="*", metavar="show CALL_SID", help="one call's turns, sources and timings")
    calls.add_argument("--since", help="a date (2024-05-01) or a duration (12h, 7d)")
    calls.add_argument(
        "--limit", type=int, default=cli.LIST_LIMIT, help=f"at most this many (default {cli.LIST_LIMIT})"
    )
    calls.add_argument("--intent", help="only calls analysed with this intent (e.g. billing)")
    calls.add_argument(
        "--need-met", choices=NEED_MET, help="only calls analysed with this outcome for the caller's need"
    )
    calls.add_argument("--json", action="store_true", help="one JSON document, for machines")
    gaps = commands.add_parser("gaps", help="questions the documents could not answer, most asked first")
    gaps.add_argument("--handled", action="store_true", help="the gaps marked handled instead of the open ones")
    gaps.add_argument("--json", action="store_true", help="one JSON document, for machines")
    listing = commands.add_parser("messages", help="the messages callers left, oldest first")
    listing.add_argument("--since", help="a date (2024-05-01) or a duration (12h, 7d)")
    listing.add_argument("--json", action="store_true", help="one JSON array, for machines")
    notify = commands.add_parser("notify", help="`notify test`: a signed ping to every webhook, a test e-mail")
    notify.add_argument("action", choices=["test"])
    commands.add_parser(
        "test-calls", add_help=False, help="run call scenarios (calls/*.yaml); `test-calls --help` for more"
    )
    return parser


def _read(command: str, args: argparse.Namespace) -> int:
    settings = load_settings()
    out = sys.stdout
    try:
        since = parse_since(args.since) if getattr(args, "since", None) else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if command == "calls":
        if not args.show:
            return asyncio.run(cli.calls(settings, since, args.json, args.limit, out, args.intent, args.need_met))
        if len(args.show) != 2 or args.show[0] != "show":
            print("usage: python -m app calls show CALL_SID [--json]", file=sys.stderr)
            return 2
        return asyncio.run(cli.call(settings, args.show[1], args.json, out))
    if command == "gaps":
        return asyncio.run(cli.gaps(settings, args.json, args.handled, out))
    return asyncio.run(cli.messages(settings, since, args.json, out))


def main() -> None:
    owner_only()  # records, logs, models and the index under DATA_DIR
    if sys.argv[1:2] == ["test-calls"]:
        # The scenario runner drives the stand-ins of app.testing: imported for this command alone.
        from app.testing.scenarios.cli import main as test_calls

        sys.exit(test_calls(sys.argv[2:]))
    args = _parser().parse_args()
    if args.command in ("calls", "gaps", "messages"):
        sys.exit(_read(args.command, args))
    if args.command == "notify":
        sys.exit(asyncio.run(notify_cli.test(load_settings(), sys.stdout)))

    generated = ensure_env_file()
    settings = load_settings()
    try:
        load_departments(settings)  # checked before serving: every mistake, one line each
    except DepartmentsError as exc:
        sys.exit(refusal(exc))
    configure_logging(settings.log_level, settings.log_format)
    if generated:
        log.info("wrote %s into .env", " and ".join(generated))
    worker_fd = getattr(args, "fd", None)
    if worker_fd is None:
        build_index_if_missing(settings)
        log.info("serving on port %s", settings.port)
        if settings.admin_password is not None:
            log.info("review page: http://localhost:%s/admin (user admin, password in .env)", settings.port)
        else:
            log.info("review page /admin is off: set ADMIN_PASSWORD to use it")
        if settings.workers > 1:
            sys.exit(supervise(settings.workers, args.host, settings.port))
    bind = f"fd://{worker_fd}" if worker_fd is not None else f"{args.host}:{settings.port}"
    # uvloop: the relay and the brain spend most of their CPU in the event loop and socket writes.
    uvloop.run(serve_until_drained(create_app(settings), bind))


if __name__ == "__main__":
    main()
