"""`python -m app`: serve Switchboard with Hypercorn on PORT; `python -m app messages`: list messages."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop

from app import create_app
from app.knowledge.index import live_build_id
from app.observability import configure_logging
from app.records.messages import list_messages
from app.server import serve
from app.settings import Settings, ensure_env_file, load_settings
from ingest.pipeline import run_ingest

log = logging.getLogger("switchboard")


def build_index_if_missing(settings: Settings) -> None:
    """First run: build the index from the sample (or your) documents so the agent can answer."""
    if live_build_id(settings) is None and settings.knowledge_dir.is_dir():
        log.info("no index yet: building one from %s (once)", settings.knowledge_dir)
        print(run_ingest(settings, progress=True).human(), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description="Switchboard: an AI phone agent server.")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
    commands = parser.add_subparsers(dest="command", title="commands (default: serve)")
    commands.add_parser("serve", help="serve on PORT (the default)")
    listing = commands.add_parser("messages", help="list the messages callers left, oldest first")
    listing.add_argument("--since", help="a date (2024-05-01) or a duration (12h, 7d)")
    listing.add_argument("--json", action="store_true", help="one JSON array, for machines")
    args = parser.parse_args()
    if args.command == "messages":
        sys.exit(list_messages(load_settings().data_dir, args.since, args.json, sys.stdout))

    wrote_env = ensure_env_file()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if wrote_env:
        log.info("wrote .env from .env.example with a fresh SHARED_SECRET")
    build_index_if_missing(settings)
    log.info("serving on port %s", settings.port)
    # uvloop: the relay and the brain spend most of their CPU in the event loop and socket writes.
    uvloop.run(serve(create_app(settings), f"{args.host}:{settings.port}"))


if __name__ == "__main__":
    main()
