"""``nanomesh peer run --log-format json``: one JSON object per record.
(A real daemon writing it: tests/integration/test_observability.py.)"""

from __future__ import annotations

import io
import json
import logging

import pytest

from nanomesh.cli.logformat import JsonFormatter, log_handler


@pytest.fixture
def logged() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = log_handler("json", "peer-7")
    handler.setStream(out)
    logger = logging.getLogger("nanomesh.test.logformat")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_its_fields_and_extras(
        logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    log.warning("peer %s is %s\nsecond line", "b", "suspect",
                extra={"member": "b", "incarnation": 3, "addr": ("10.0.0.2", 7946),
                       "odd": object()})
    (record,) = lines(out)
    assert record["level"] == "WARNING" and record["logger"] == "nanomesh.test.logformat"
    assert record["msg"] == "peer b is suspect\nsecond line"  # newlines escaped: one line
    assert record["peer"] == "peer-7"
    assert record["member"] == "b" and record["incarnation"] == 3
    assert record["addr"] == ["10.0.0.2", 7946]
    assert str(record["odd"]).startswith("<object object")  # not JSON: its str
    ts = str(record["ts"])
    assert ts.endswith("Z") and len(ts) == len("2026-01-01T00:00:00.000Z"), ts
    assert "args" not in record and "levelno" not in record  # no LogRecord internals


def test_an_exception_travels_in_exc(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed")
    (record,) = lines(out)
    assert record["msg"] == "handler failed" and record["level"] == "ERROR"
    assert "Traceback" in str(record["exc"]) and "ValueError: boom" in str(record["exc"])


def test_an_extra_cannot_overwrite_the_standard_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.peer = "spoofed"
    assert json.loads(JsonFormatter("real").format(record))["peer"] == "real"


def test_text_stays_the_default_format() -> None:
    handler = log_handler("text", "peer-7")
    record = logging.LogRecord("nanomesh.x", logging.INFO, __file__, 1, "hello", None, None)
    text = handler.format(record)
    assert text.endswith(" peer-7 INFO nanomesh.x: hello") and not text.startswith("{")
