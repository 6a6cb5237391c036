"""Logs and metrics: one place that knows how a turn, a call and a request are recorded.

Log lines carry the conversation and event ids from context variables, so code deep in a turn
does not pass them around. `LOG_FORMAT=json` gives one JSON object per line for machines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

conversation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("conversation_id", default=None)
event_id_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("event_id", default=None)

_CONTEXT_FIELDS = ("conversation_id", "event_id")
# Phone numbers and card-like digit runs (ten digits or more) never reach a log line in full.
_DIGITS = re.compile(r"\+?\d[\d \-()]{8,}\d")


# Characters that would let a value start a new line or rewrite one in a text log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
TRACE_INDENT = "    "


def escaped(text: str) -> str:
    """One line: newlines and other control characters written as escapes (\\n, \\x1b)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text) if _CONTROL.search(text) else text


def mask_digits(text: str) -> str:
    """Keep the last two digits of long digit runs (phone numbers, card numbers)."""

    def _mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        return "*" * (len(digits) - 2) + digits[-2:]

    return _DIGITS.sub(_mask, text)


def one_line(exc: BaseException) -> str:
    """An error in one line for a log: the first line of its message (for a database error, its
    driver's, without the SQL and parameters SQLAlchemy appends), else its type."""
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "conversation_id", None) is None:
            record.conversation_id = conversation_id_var.get()
        if getattr(record, "event_id", None) is None:
            record.event_id = event_id_var.get()
        return True


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_digits(record.getMessage()),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line per record, whatever its values hold (a forged line stays inside its record); a
    traceback follows on lines of its own, each indented."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {mask_digits(record.getMessage())}"
        if fields:
            line = f"{line} [{fields}]"
        line = escaped(line)
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n{TRACE_INDENT}{escaped(part)}" for part in trace)
        return line


def log_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """The handler the server logs through: `text` or `json` lines, to stderr unless `stream` is given."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    return handler


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger, to stderr unless `stream` is given (make call: a log file)."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(fmt, stream)]
    root.setLevel(level)
    # Library chatter at INFO would drown the one-line-per-turn record.
    for noisy in ("httpx", "httpcore", "hypercorn.access", "chromadb", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class Metrics:
    """Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.turns = Counter("switchboard_turns_total", "Brain turns by outcome", ["outcome"], registry=self.registry)
        self.turn_first_chunk = Histogram(
            "switchboard_turn_first_chunk_seconds",
            "Transcript received to first text chunk produced",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
        )
        self.turn_total = Histogram(
            "switchboard_turn_seconds", "Transcript received to final chunk", registry=self.registry
        )
        self.llm_first_token = Histogram(
            "switchboard_llm_first_token_seconds", "Model request to first token", registry=self.registry
        )
        self.retrieval = Histogram(
            "switchboard_retrieval_seconds",
            "Query embedding plus search",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.turns_held = Counter(
            "switchboard_turns_held_total",
            "Turns that said the holding line because their answer was slow to start",
            registry=self.registry,
        )
        self.abstentions = Counter(
            "switchboard_abstentions_total",
            "Turns by whether retrieval found nothing relevant",
            ["abstained"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "switchboard_fallbacks_total",
            "Turns answered without the model, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.sanitiser_flags = Counter(
            "switchboard_sanitiser_flags_total", "Transcript turns flagged", ["flag"], registry=self.registry
        )
        self.dropped_frames = Counter(
            "switchboard_dropped_frames_total",
            "Malformed or unexpected frames dropped",
            ["leg", "reason"],
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "switchboard_tool_calls_total",
            "Tool calls from the model or the keypad, by tool and outcome (accepted or why rejected)",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.call_actions = Counter(
            "switchboard_call_actions_total",
            "Actions on live calls (transfer, hang up) by outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.brain_rejected = Counter(
            "switchboard_brain_rejected_total", "Brain connections refused", ["reason"], registry=self.registry
        )
        self.twilio_rejected = Counter(
            "switchboard_twilio_rejected_total",
            "Webhooks and media streams refused (signature, token, busy)",
            ["reason"],
            registry=self.registry,
        )
        self.calls = Counter(
            "switchboard_calls_total", "Calls bridged, by end reason", ["reason"], registry=self.registry
        )
        self.calls_active = Gauge("switchboard_calls_active", "Calls being bridged now", registry=self.registry)
        self.early_conversations = Counter(
            "switchboard_early_conversations_total",
            "Conversations opened when the webhook arrived: claimed by their stream, or closed unclaimed",
            ["outcome"],
            registry=self.registry,
        )
        self.elevenlabs_errors = Counter(
            "switchboard_elevenlabs_errors_total",
            "Error events on ElevenLabs conversation sockets (the call goes on until the socket closes)",
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "switchboard_call_seconds",
            "Bridged call length",
            registry=self.registry,
            buckets=(5, 15, 30, 60, 120, 300, 600, 900, 1800),
        )
        self.relayed_frames = Counter(
            "switchboard_relayed_frames_total",
            "Audio frames relayed, by direction (added when a call ends)",
            ["direction"],
            registry=self.registry,
        )
        self.records_written = Counter(
            "switchboard_records_written_total", "Call and turn records written to the store", registry=self.registry
        )
        self.records_dropped = Counter(
            "switchboard_records_dropped_total",
            "Call and turn records dropped, by reason (buffer full while the store was away, shutdown)",
            ["reason"],
            registry=self.registry,
        )
        self.records_write_errors = Counter(
            "switchboard_records_write_errors_total", "Failed writes to the records store", registry=self.registry
        )
        self.notify_deliveries = Counter(
            "switchboard_notify_deliveries_total",
            "Webhook and e-mail sends by outcome: delivered, failed (to be retried or dead), dead (given up)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.caller_lookups = Counter(
            "switchboard_caller_lookups_total",
            "Caller lookups at pickup by outcome: answered, unknown, timeout, error, invalid, too_large",
            ["outcome"],
            registry=self.registry,
        )
        self.caller_lookup_seconds = Histogram(
            "switchboard_caller_lookup_seconds",
            "Caller lookup request to its answer (or the timeout)",
            registry=self.registry,
            buckets=(0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3, 10),
        )
        self.analyses = Counter(
            "switchboard_analyses_total",
            "Post-call analyses by method (model, rules) and outcome: done, retried (to be tried again), failed",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.admin_logins = Counter(
            "switchboard_admin_logins_total",
            "Review page requests by login outcome (success, failure: a wrong user or password)",
            ["outcome"],
            registry=self.registry,
        )
        self.records_pending = Gauge(
            "switchboard_records_pending", "Records waiting to be written", registry=self.registry
        )
