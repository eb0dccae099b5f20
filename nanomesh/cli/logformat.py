"""How ``nanomesh peer run`` writes its log: text for people (the default),
or one JSON object per line for log shippers (``--log-format json``:
journald's ``SYSLOG_IDENTIFIER`` aside, Loki, Vector and Fluent Bit read it
without a parsing rule).

A JSON line holds ``ts`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger``, ``msg`` (the formatted message), ``peer`` (this peer's name),
``exc`` (the traceback, if the record has one), and every extra field the
call passed (``log.info("...", extra={"service": "echo"})``); a value JSON
cannot hold is written as its ``str``.
"""

from __future__ import annotations

import datetime
import json
import logging

LOG_FORMATS = ("text", "json")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
"""Attributes every LogRecord has: anything else on a record is an extra field."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name,
               "msg": record.getMessage(), "peer": self.peer}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_handler(fmt: str, peer: str) -> logging.Handler:
    """A stderr handler writing ``fmt`` (one of LOG_FORMATS) for peer ``peer``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(peer))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {peer} %(levelname)s %(name)s: %(message)s"))
    return handler
