"""How log lines look: key=value text (the default) or one JSON object a line for log shippers.

Both go to stderr through the stdlib `logging` module. A JSON line holds `time` (ISO 8601,
UTC, milliseconds), `level`, `logger` and `message`, and `exception` (the formatted traceback)
when the record carries one, so a shipper needs no multi-line parsing.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum

TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: LogFormat | str) -> logging.Formatter:
    if LogFormat(log_format) is LogFormat.JSON:
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


# Libraries that log one INFO line per HTTP request they make (httpx: every S3 PUT and HEAD):
# only their warnings are shown, unless the level is DEBUG.
CHATTY = ("httpx", "httpcore")


def configure(level: str, log_format: LogFormat | str = LogFormat.TEXT) -> None:
    """Send every logger's records to stderr at `level`, in `log_format`.

    In JSON format Python's warnings go through logging too, so that stderr stays one JSON
    object per line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(LogFormat(log_format) is LogFormat.JSON)
