"""JSON logs: one object per line on stderr, with the trace context when there is one."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Libraries whose own lines are internals, not the service's story: gRPC's Python layer (its debug
# lines, and a line for every client that goes away mid-stream) and asyncio's. Their warnings and
# errors still show. gRPC core's C lines are kept out by GRPC_VERBOSITY=ERROR (cli.py).
QUIET_LIBRARIES = {"grpc": logging.WARNING, "asyncio": logging.WARNING}


class AnswerAfterTheCallerLeft(logging.Filter):
    """gRPC logs at ERROR, with a traceback, an answer it could not send because the RPC had already
    ended on the wire ("ExecuteBatchError raised in core by servicer method [...]"): the caller gave up
    (its deadline passed) or went away while the server finished its request, as a mutation that
    reached the provider always is (SPEC.md API-8). Nothing failed in the server: the outcome is
    committed and a retry with the request_id gets it. So it is one of gRPC's internal lines, kept
    out like the others below QUIET_LIBRARIES' level, not an error an operator (or the conformance
    suite, which fails a check during which the server logged one) must chase."""

    PREFIX = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] != "grpc" or not record.getMessage().startswith(self.PREFIX):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(AnswerAfterTheCallerLeft())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
