import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmux import __version__
from llmux.config import load_config
from llmux.ops.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "llmux.example.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(str(ROOT / "conf" / name))
    assert config.models


def test_check_valid():
    result = CliRunner().invoke(main, ["check", "-c", str(ROOT / "conf" / "demo.yaml")])
    assert result.exit_code == 0
    assert "ok: listens on 127.0.0.1:3000, 3 models" in result.output


def test_check_lists_every_problem_one_per_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("port: 0\nmodels:\n  m: {port: x, wake: a, sleep: b}\n")
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1
    assert sorted(result.output.splitlines()) == [
        f"{path}: models.m.alive: required",
        f'{path}: models.m.port: expected an integer 1-65535, got "x"',
        f"{path}: port: expected an integer 1-65535, got 0",
    ]


def test_check_unreadable_and_usage(tmp_path):
    result = CliRunner().invoke(main, ["check", "-c", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "cannot read" in result.output
    assert CliRunner().invoke(main, ["check", "--bogus"]).exit_code == 2


def test_config_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMUX_CONFIG", str(ROOT / "conf" / "demo.yaml"))
    assert CliRunner().invoke(main, ["check"]).exit_code == 0


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize(
    "setting, message",
    [
        ("workers = 2", "workers must be 1"),
        ("max_requests = 100", "max_requests must be 0"),
        ("preload_app = True", "preload_app must be off"),
    ],
)
def test_serve_refuses_a_gunicorn_shape_llmux_cannot_run_in(tmp_path, setting, message):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(setting + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmux",
            "serve",
            "-c",
            str(ROOT / "conf" / "demo.yaml"),
            "--port",
            "3999",
            "--gunicorn-config",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_serve_refuses_an_invalid_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "llmux", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "models: expected a mapping with at least one model" in result.stderr


def test_the_master_imports_nothing_heavy():
    """gunicorn's master imports these before gevent patches (gunicorn itself brings ssl)."""
    code = (
        "import sys, runpy; import llmux.ops.cli, llmux.ops.server, llmux.server;"
        f"runpy.run_path({str(ROOT / 'gunicorn.conf.py')!r});"
        "bad = [m for m in ('flask', 'werkzeug', 'requests', 'urllib3') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_text_log_format_escapes_control_characters():
    import logging

    from llmux.telemetry.logs import TextFormatter

    record = logging.LogRecord(
        "llmux", logging.INFO, __file__, 1, "model %s", ("a\nb\x1b[2J",), None
    )
    record.event = "e"
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO model a\\x0ab\\x1b[2J [event=e]"


def test_check_shows_cost_aware_settings_and_warns_of_a_shorter_timeout(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  m: {port: 8001, wake: a, sleep: b, alive: c}\n"
        "policy: {policy_type: cost_aware, max_wait_secs: 200, request_timeout_secs: 60}\n"
    )
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "policy cost_aware: request_timeout_secs=60.0" in result.output
    assert "max_wait_secs=200, quantum_factor=1" in result.output
    assert "warning: request_timeout_secs (60) is below max_wait_secs (200)" in result.output
