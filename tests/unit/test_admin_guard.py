"""Who may use the admin API: checked on the Flask app with clients from other addresses."""

from __future__ import annotations

import pytest

from llmux.web.app import create_app

CONFIG = """
port: 3999
models:
  a: {port: 18991, wake: "true", sleep: "true", alive: "false"}
"""


@pytest.fixture
def client_for(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMUX_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("LLMUX_ADMIN_TOKEN", raising=False)

    def build(extra="", remote="127.0.0.1"):
        path = tmp_path / "llmux.yaml"
        path.write_text(CONFIG + extra)
        app = create_app(str(path))
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = remote
        return client

    return build


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1"])
def test_without_a_token_loopback_clients_are_answered(client_for, remote):
    r = client_for(remote=remote).get("/llmux/status")
    assert r.status_code == 200 and r.json["models"]["a"]["state"] == "asleep"


@pytest.mark.parametrize("remote", ["10.0.0.5", "192.168.1.20", "2001:db8::1", "", "bogus"])
def test_without_a_token_other_clients_are_refused(client_for, remote):
    client = client_for(remote=remote)
    for method, path in [("get", "/llmux/status"), ("post", "/llmux/reload")]:
        r = getattr(client, method)(path)
        assert r.status_code == 403, (path, r.data)
        assert r.json["error"]["code"] == "forbidden"
        assert "admin.token" in r.json["error"]["message"]


def test_with_a_token_every_client_needs_it(client_for):
    for remote in ("127.0.0.1", "10.0.0.5"):
        client = client_for('admin: {token: "tk"}\n', remote=remote)
        for header, status in [(None, 401), ("Bearer no", 401), ("Bearer tk", 200)]:
            headers = {"Authorization": header} if header else {}
            assert client.get("/llmux/status", headers=headers).status_code == status


def test_the_page_is_served_to_anyone_and_holds_no_data(client_for):
    r = client_for('admin: {token: "tk"}\n', remote="10.0.0.5").get("/llmux/ui")
    assert r.status_code == 200
    assert b"<title>llmux status</title>" in r.data
    assert b"18991" not in r.data and b"tk" not in r.data.replace(b"token", b"")
