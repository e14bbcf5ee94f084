"""Findings from the hosting server's log (`--provider` mode): what the server wrote at level error
or above, or with a traceback, while a check ran.

A provider that raises is answered PROVIDER_UNAVAILABLE, which a check may tolerate or never see
(a release runs after the answer; a change is reported in the background). The server logs every
such failure with its traceback. The runner remembers where the log ended before each check and
reads what was appended during it (the check and its cleanup), so each finding is attached to the
check during which it was written — the log's byte offsets are the markers; the lines' own
timestamps are printed with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SERIOUS = frozenset({"error", "critical", "fatal"})
MAX_FINDINGS = 5  # per check: the first few say what happened; the rest repeat it
START_LINE = "--- start #"  # written by callqos.server.testing before each start


@dataclass(frozen=True)
class Finding:
    time: str
    level: str
    message: str
    exception: str  # the traceback's last line ("ValueError: Value out of range: 5500000000"), or ""

    def __str__(self) -> str:
        text = f"{self.time} {self.level}: {self.message}"
        return f"{text} ({self.exception})" if self.exception else text


def _last_line(traceback: str) -> str:
    lines = [line.strip() for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse(text: str) -> list[Finding]:
    """The serious entries among log lines: JSON entries at level error or above, or carrying an
    exception; raw lines that start a Python traceback (written outside the logging set-up)."""
    found: list[Finding] = []
    raw_traceback: list[str] = []
    for line in text.splitlines():
        if raw_traceback:
            raw_traceback.append(line)
            if line and not line.startswith((" ", "Traceback")):
                found.append(Finding("", "error", "traceback outside the log format", line.strip()))
                raw_traceback = []
            continue
        if not line.strip() or line.startswith(START_LINE):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if line.startswith("Traceback"):
                raw_traceback = [line]
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "")).lower()
        exception = str(entry.get("exception", ""))
        if level in SERIOUS or exception:
            found.append(
                Finding(str(entry.get("time", "")), level, str(entry.get("message", "")), _last_line(exception))
            )
    return found


class LogWatch:
    """Reads what a growing log file gained since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> None:
        """Forget what is in the log now: later findings start here."""
        self.offset = self._size()

    def read(self) -> list[Finding]:
        """Findings appended since the last mark or read."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        # Only whole lines: a line being written now is read next time.
        end = data.rfind(b"\n") + 1
        self.offset += end
        return parse(data[:end].decode("utf-8", errors="replace"))
