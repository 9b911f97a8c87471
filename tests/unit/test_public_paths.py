"""The old module paths that users' files name keep working after the package layout."""

import subprocess
import sys

import llmux.app
import llmux.fake_backend
import llmux.server
from llmux.demo import fake_backend
from llmux.netaddr import is_loopback
from llmux.ops import server
from llmux.web import app


def test_llmux_app_create_app_is_the_web_apps():
    assert llmux.app.create_app is app.create_app  # SPEC §2: llmux.app:create_app


def test_llmux_server_offers_what_a_gunicorn_conf_py_imports():
    assert llmux.server.default_bind is server.default_bind
    assert llmux.server.gunicorn_settings is server.gunicorn_settings
    assert llmux.server.is_loopback is is_loopback
    for name in llmux.server.__all__:
        assert getattr(llmux.server, name) is not None


def test_python_m_llmux_fake_backend_runs_the_demo_backend():
    assert llmux.fake_backend.main is fake_backend.main
    result = subprocess.run(
        [sys.executable, "-m", "llmux.fake_backend", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: llmux fake-backend")
