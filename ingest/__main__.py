"""`python -m ingest`: what `make ingest` runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.knowledge.embedding import ModelNotFound
from app.settings import load_settings
from ingest.errors import IngestError
from ingest.pipeline import DEFAULT_WAIT_SECONDS, StrictRefused, rollback, run_ingest
from ingest.progress import STAGES
from ingest.watch import watch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description=(
            "Turn the documents in the knowledge directory (.md, .txt, .html, .pdf, .docx, searched "
            "recursively) into a new index build and make it live. Only new or changed text is embedded; "
            "an unchanged corpus is a no-op. The server picks up the new build without a restart."
        ),
        epilog=(
            "Exit status: 0 done, 1 failed (nothing changed), 2 source directory missing, 3 another "
            "ingest holds the lock. Settings (KNOWLEDGE_DIR, INDEX_DIR, CHROMA_HOST/CHROMA_PORT, "
            "EMBEDDING_MODEL, INGEST_MAX_FILE_MB, INGEST_LEASE_SECONDS) come from the environment or .env."
        ),
    )
    parser.add_argument("--source", type=Path, metavar="DIR", help="documents to ingest (default: KNOWLEDGE_DIR)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object, no progress bar")
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 1, nothing written) if any file would be skipped"
    )
    parser.add_argument(
        "--rollback", action="store_true", help="make the previous build live again instead of ingesting"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="after ingesting, keep watching the documents and ingest each change once it settles (Ctrl-C stops)",
    )
    parser.add_argument(
        "--pause-at",
        choices=STAGES,
        metavar="STAGE",
        help=f"stop this process (SIGSTOP) a little way into STAGE ({', '.join(STAGES)}), to test what a crash "
        "there leaves behind",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for another running ingest to finish (default {DEFAULT_WAIT_SECONDS:g})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    try:
        if args.rollback:
            result = rollback(settings, wait_seconds=args.wait)
        elif args.watch:
            watch(settings, args.source, wait_seconds=args.wait, as_json=args.json, strict=args.strict)
            return 0
        else:
            result = run_ingest(
                settings,
                args.source,
                wait_seconds=args.wait,
                progress=not args.json,
                strict=args.strict,
                pause_at=args.pause_at,
            )
    except StrictRefused as exc:
        _emit(exc.report.to_json() | {"error": str(exc)} if args.json else f"{exc.report.human()}", args.json)
        print(f"ingest: {exc}", file=sys.stderr)
        return exc.exit_code
    except (IngestError, ModelNotFound) as exc:
        if args.json:
            _emit({"error": str(exc)}, True)
        print(f"ingest: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    _emit(result.to_json() if args.json else result.human(), args.json)
    return 0


def _emit(payload: object, as_json: bool) -> None:
    print(json.dumps(payload) if as_json else payload)


if __name__ == "__main__":
    sys.exit(main())
