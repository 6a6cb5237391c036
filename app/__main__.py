"""`python -m app`: serve Switchboard with Hypercorn on PORT."""

from __future__ import annotations

import argparse
import asyncio
import logging

from . import create_app
from .observability import configure_logging
from .server import serve
from .settings import ensure_env_file, load_settings

log = logging.getLogger("switchboard")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description="Switchboard: an AI phone agent server.")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
    args = parser.parse_args()

    wrote_env = ensure_env_file()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if wrote_env:
        log.info("wrote .env from .env.example with a fresh SHARED_SECRET")
    log.info("serving on port %s", settings.port)
    asyncio.run(serve(create_app(settings), f"{args.host}:{settings.port}"))


if __name__ == "__main__":
    main()
