"""The JSON log format: one object per record, on one line, with the exception when present."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from tr_vault.config import load_settings
from tr_vault.errors import ConfigError
from tr_vault.logformat import JsonFormatter, LogFormat, formatter


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("the cached file is gone")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("tr_vault.x", logging.WARNING, __file__, 1, message, args, exc_info)
    made.created = 1764001234.5  # 2025-11-24T16:20:34.500Z
    return made


def test_a_record_is_one_json_object_with_the_fields() -> None:
    line = JsonFormatter().format(record("call received id=%d system=%s", 42, "Zürich"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2025-11-24T16:20:34.500Z",
        "level": "WARNING",
        "logger": "tr_vault.x",
        "message": "call received id=42 system=Zürich",
    }


def test_the_exception_goes_into_the_same_line() -> None:
    line = JsonFormatter().format(record("upload of call_id=%d raised\nsecond line", 7, exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "upload of call_id=7 raised\nsecond line"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: the cached file is gone")


def test_text_stays_key_value() -> None:
    text = formatter(LogFormat.TEXT).format(record("call uploaded id=%d", 1))
    assert " level=WARNING logger=tr_vault.x call uploaded id=1" in text


def test_the_setting_takes_text_or_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings().log_format is LogFormat.TEXT
    assert load_settings().access_log is False
    monkeypatch.setenv("TR_VAULT_LOG_FORMAT", "json")
    assert load_settings().log_format is LogFormat.JSON
    monkeypatch.setenv("TR_VAULT_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="^TR_VAULT_LOG_FORMAT: "):
        load_settings()
