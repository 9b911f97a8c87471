"""Where logs go: stderr by default, a file that follows logrotate's renames when asked, for
``llmux serve --log-file`` and for ``gunicorn -c gunicorn.conf.py`` with ``LLMUX_LOG_FILE``."""

import json
import subprocess
import sys

import pytest

from llmux.ops.server import gunicorn_settings
from llmux.telemetry.logs import logging_config


def handler_of(config: dict) -> dict:
    (handler,) = config["handlers"].values()
    return handler


def test_stderr_by_default(monkeypatch):
    monkeypatch.delenv("LLMUX_LOG_FILE", raising=False)
    handler = handler_of(gunicorn_settings()["logconfig_dict"])
    assert handler["class"] == "logging.StreamHandler"
    assert handler["stream"] == "ext://sys.stderr"


def test_gunicorn_conf_takes_the_file_and_format_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMUX_LOG_FILE", str(tmp_path / "llmux.log"))
    monkeypatch.setenv("LLMUX_LOG_FORMAT", "text")
    config = gunicorn_settings()["logconfig_dict"]
    handler = handler_of(config)
    assert handler["class"] == "logging.handlers.WatchedFileHandler"
    assert handler["filename"] == str(tmp_path / "llmux.log")
    assert list(config["formatters"]) == ["text"]


RENAME_BETWEEN_TWO_RECORDS = """
import logging, logging.config, os, sys
from llmux.telemetry.logs import logging_config
path = sys.argv[1]
logging.config.dictConfig(logging_config("json", log_file=path))
log = logging.getLogger("llmux.test")
log.info("before")
os.rename(path, path + ".1")  # what logrotate does
log.info("after")
"""


def test_the_file_is_reopened_once_renamed(tmp_path):
    # in a process of its own: dictConfig changes the logging of the whole process
    path = tmp_path / "llmux.log"
    subprocess.run(
        [sys.executable, "-c", RENAME_BETWEEN_TWO_RECORDS, str(path)], check=True, timeout=60
    )
    old = [json.loads(line) for line in (tmp_path / "llmux.log.1").read_text().splitlines()]
    new = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["message"] for r in old] == ["before"]
    assert [r["message"] for r in new] == ["after"]


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format"):
        logging_config("xml")
