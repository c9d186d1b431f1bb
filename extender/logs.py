"""One log line per record, whatever the record carries: the extender logs names and messages that come from
requests and cluster objects, so a newline in a pod name must not forge a second line, and a 10 MiB name must
not write 10 MiB of log."""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MAX_LINE = 4096  # characters of a record's message; a traceback below it is kept whole
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def escape(text: str, limit: int = MAX_LINE) -> str:
    """Control characters as escapes (``\\n``, ``\\x1b``), and at most ``limit`` characters."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.getMessage())
        return super().formatMessage(record)


def configure(level: str) -> None:
    """The CLIs' logging: ``level`` and one line per record on standard error."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
