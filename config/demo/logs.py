"""What was logged during a demo run, kept off the console and summarised in the report.

The demo's settings (config/settings/demo_isolated.py) send Django's request and security logs and
hotcache's log here. A run answers hundreds of expected 401s and 429s, each of which Django logs as a
warning ("Unauthorized: /api/usage/"); on the console they drowned the report. Here they are counted
by (logger, level, what happened), and the report lists them, so what is genuinely
wrong (an error, a DisallowedHost) is still shown, once, with its count.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

__all__ = ["EXPECTED_ERRORS", "DemoLogCollector", "LoggedRecord", "collected", "expected_because", "reset"]

# Errors hotcache logs in a demo run that are not a failure of the run: (logger, start of the message, why).
# Any other ERROR or CRITICAL record fails the run (config/demo/runner.py).
EXPECTED_ERRORS: list[tuple[str, str, str]] = [
    (
        "hotcache.health",
        "hotcache: redis unavailable",
        "Redis stopped or unreachable: the health gate opened and the fallbacks served (see Health gate)",
    ),
    (
        "hotcache.redis",
        "hotcache: redis rejected a status call: unknown command 'info'",
        "fakeredis has no INFO: the memory gauge shows unknown",
    ),
]

_lock = threading.Lock()
_records: Counter[tuple[str, str, str]] = Counter()
_examples: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True, slots=True)
class LoggedRecord:
    """One kind of log record and how often it was logged."""

    logger: str
    level: str
    message: str  # the first message of its kind, as logged
    count: int

    @property
    def is_error(self) -> bool:
        return self.level in ("ERROR", "CRITICAL")

    def as_dict(self) -> dict[str, str | int]:
        return {"logger": self.logger, "level": self.level, "message": self.message, "count": self.count}


def expected_because(record: LoggedRecord) -> str | None:
    """Why an error record is not a failure of the run, or None when it is one (EXPECTED_ERRORS)."""
    for logger, start, why in EXPECTED_ERRORS:
        if record.logger == logger and record.message.startswith(start):
            return why
    return None


class DemoLogCollector(logging.Handler):
    """A logging handler that counts records instead of printing them (see the module docstring)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: count it under its template
            message = str(record.msg)
        # Group by what happened, keep the first full message as the example: Django's request log by its
        # reason ("Unauthorized: /api/usage/" without the path), the others by their template (one row for
        # "could not invalidate %d cached user(s) (%s)", not one per user).
        if record.name == "django.request":
            what = message.split(": /", 1)[0]
        else:
            what = str(record.msg) if record.args else message
        kind = (record.name, record.levelname, what)
        with _lock:
            _records[kind] += 1
            _examples.setdefault(kind, message)


def collected() -> list[LoggedRecord]:
    """Everything logged since the last reset(), most severe first, then most frequent."""
    with _lock:
        items = [(kind, n, _examples[kind]) for kind, n in _records.items()]
    items.sort(key=lambda item: (-logging.getLevelName(item[0][1]), -item[1], item[0]))
    return [LoggedRecord(logger, level, example, n) for (logger, level, _), n, example in items]


def reset() -> None:
    with _lock:
        _records.clear()
        _examples.clear()
