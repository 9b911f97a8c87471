"""Every row of SPEC §6's error table, from a real llmux process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import pytest
import requests

from tests.support import wait_for

pytestmark = pytest.mark.e2e


def assert_error(r, status, code, *, param=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == code
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert error["param"] == param
    assert "Traceback" not in r.text
    return error


def raw_post(server, path, body: bytes, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "body",
    [
        b"hello",
        b'{"model":',
        b"[1, 2]",
        b'"a"',
        b"null",
        b"",
        b'{"model": "a\xff"}',
        b'{"model": "a", "messages": [], "model": "b"}',
    ],
    ids=["not-json", "truncated", "array", "string", "null", "empty", "bad-utf8", "dup-model"],
)
def test_invalid_body(llmux, body):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, "invalid_body")
    assert llmux.hook_runs() == []


@pytest.mark.parametrize(
    "body", [{"messages": []}, {"model": 1}, {"model": ""}, {"model": None}, {"model": ["a"]}]
)
def test_invalid_model(llmux, body):
    assert_error(llmux.post(body=body), 400, "invalid_model", param="model")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_unsupported_media_type(llmux, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, body = raw_post(llmux, "/v1/chat/completions", b'{"model":"a"}', headers)
    assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
    assert llmux.hook_runs() == [], "a non-JSON POST made llmux run a hook"


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"],
)
def test_json_content_types_are_accepted(llmux, content_type):
    status, _, _ = raw_post(
        llmux, "/v1/chat/completions", b'{"model":"a"}', {"Content-Type": content_type}
    )
    assert status == 200


def test_request_too_large(llmux_factory):
    server = llmux_factory(proxy={"max_body_bytes": 1000})
    big = json.dumps({"model": "a", "pad": "x" * 2000}).encode()
    r = server.session.post(
        server.url + "/v1/chat/completions", data=big, headers={"Content-Type": "application/json"}
    )
    assert_error(r, 413, "request_too_large")

    def chunks():  # no Content-Length: counted while reading
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    r = requests.post(
        server.url + "/v1/chat/completions",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert_error(r, 413, "request_too_large")
    assert server.hook_runs() == []
    assert server.chat("a").status_code == 200  # and it keeps serving


def test_model_not_found(llmux):
    for name in ("nope", "A", "a;touch /tmp/pwn", "$(id)", "x" * 500):
        error = assert_error(llmux.chat(name), 404, "model_not_found", param="model")
        assert "not found" in error["message"] and name[:100] in error["message"]
        assert len(error["message"]) < 200
    assert llmux.hook_runs() == []


def test_api_keys(llmux_factory):
    server = llmux_factory(api_keys=["sk-one", "sk-two"])
    body = {"model": "a", "messages": [], "fake": {"echo_headers": True}}
    assert_error(server.post(body=body), 401, "unauthorized")
    assert_error(
        server.post(body=body, headers={"Authorization": "Bearer sk-bad"}), 401, "unauthorized"
    )
    assert_error(server.post(body=body, headers={"Authorization": "sk-one"}), 401, "unauthorized")
    assert server.hook_runs() == []
    r = server.post(body=body, headers={"Authorization": "Bearer sk-two"})
    assert r.status_code == 200
    assert "Authorization" not in r.json()["x_headers"], "llmux's own key reached the backend"
    # local routes stay open
    assert requests.get(server.url + "/v1/models", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completion",
        "/admin",
        "/slots/0",
        "/v1/../slots/0",
        "/v1/%2e%2e/slots/0",
        "//v1/chat/completions",
        "/v1/chat/completions%2F..%2F..%2Fprops",
        "/V1/chat/completions",
        "/v1/chat/completions;x",
        "/v1\\..\\props",
        "/",
    ],
)
def test_unrouted_paths_are_not_found_and_never_forwarded(llmux, path):
    status, _, body = raw_post(llmux, path, b'{"model":"a"}', {"Content-Type": "application/json"})
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert llmux.hook_runs() == []


def test_a_path_missing_v1_is_not_found_with_a_hint(llmux):
    for method in ("POST", "GET"):  # routed by llmux's own dispatch, and by Flask's 404
        r = requests.request(
            method, llmux.url + "/chat/completions", json={"model": "a"}, timeout=10
        )
        message = r.json()["error"]["message"]
        assert r.status_code == 404 and "did you mean /v1/chat/completions?" in message, message
    r = requests.post(llmux.url + "/nothing", json={"model": "a"}, timeout=10)
    assert r.status_code == 404 and "did you mean" not in r.json()["error"]["message"]
    assert llmux.hook_runs() == []


def test_queue_full(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 1.5}, policy={"max_queue_depth": 1})
    first = threading.Thread(target=server.chat, args=("a",))
    first.start()
    wait_for(lambda: server.status()["models"]["a"]["queued"] == 1)
    r = requests.post(server.url + "/v1/chat/completions", json={"model": "a"}, timeout=10)
    assert_error(r, 429, "queue_full", param="model")
    assert int(r.headers["Retry-After"]) >= 1
    first.join()


def test_queue_timeout(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 1.0}, policy={"request_timeout_secs": 0.3})
    started = time.monotonic()
    assert_error(server.chat("a"), 504, "queue_timeout", param="model")
    assert 0.25 < time.monotonic() - started < 1.0


def test_switch_timeout_when_the_drain_does_not_finish(llmux_factory):
    server = llmux_factory(policy={"drain_timeout_secs": 0.5})
    stream = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "a", "stream": True, "fake": {"stall_after": 1}},
        stream=True,
        timeout=30,
    )
    assert stream.status_code == 200
    r = server.chat("b")
    error = assert_error(r, 503, "switch_timeout", param="model")
    assert "Retry-After" in r.headers and "'a'" in error["message"]
    stream.close()
    assert server.chat("a").status_code == 200  # a kept serving
    assert server.hook_runs() == [("wake", "a")]


def test_model_unavailable_when_the_wake_fails(llmux):
    llmux.fault("wake", "b", "echo 'CUDA out of memory' >&2; exit 3")
    r = llmux.chat("b")
    error = assert_error(r, 503, "model_unavailable", param="model")
    assert "wake hook" in error["message"] and "exit code 3" in error["message"]
    assert "CUDA out of memory" in error["message"]
    assert int(r.headers["Retry-After"]) >= 1
    llmux.fault("wake", "b", None)
    assert llmux.chat("b").status_code == 200  # waits out the backoff; no restart needed


def test_bad_gateway_when_the_backend_refuses(llmux):
    llmux.fault("wake", "c", "exit 0")  # "wakes" without starting a backend
    llmux.fault("alive", "c", "exit 0")
    error = assert_error(llmux.chat("c"), 502, "bad_gateway")
    assert "refused" in error["message"]
    assert "127.0.0.1" not in error["message"]


def test_gateway_timeout_when_headers_do_not_come(llmux_factory):
    server = llmux_factory(proxy={"header_timeout": 0.5})
    started = time.monotonic()
    r = server.chat("a", fake={"headers_delay_ms": 3000})
    assert_error(r, 504, "gateway_timeout")
    assert time.monotonic() - started < 2.5


def test_shutting_down_answers_queued_requests(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": 3})
    results = {}

    def queued():
        results["r"] = requests.post(
            server.url + "/v1/chat/completions", json={"model": "a"}, timeout=20
        )

    t = threading.Thread(target=queued)
    t.start()
    wait_for(lambda: server.status()["models"]["a"]["queued"] == 1)
    server.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert_error(results["r"], 503, "shutting_down")
    assert server.proc.wait(15) == 0


def test_wrong_method_on_a_local_route_is_not_routed(llmux):
    r = requests.post(llmux.url + "/v1/models", json={"model": "a"}, timeout=5)
    assert_error(r, 404, "not_found")
    assert llmux.hook_runs() == []


@pytest.mark.parametrize(
    "head, body",
    [
        (b"Content-Length: 500\r\n", b'{"model":"a"}'),  # then the client stops sending
        (b"Transfer-Encoding: chunked\r\n", b'zz\r\n{"model":"a"}\r\n0\r\n\r\n'),
        (b"Transfer-Encoding: chunked\r\n", b'100\r\n{"model":"a"}'),  # cut in a chunk
    ],
    ids=["short-of-content-length", "bad-chunk-size", "cut-in-a-chunk"],
)
def test_an_incomplete_or_malformed_body_is_400_and_routes_nothing(llmux, head, body):
    with socket.create_connection(("127.0.0.1", llmux.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n" + head + b"\r\n" + body
        )
        sock.shutdown(socket.SHUT_WR)  # the body ends here, as a client that quits sends it
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:300]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_body"
    assert llmux.hook_runs() == []
    records = llmux.log_records()
    assert not [r for r in records if r.get("event") == "internal_error"]


def test_methods_llmux_does_not_route_get_405_and_local_paths_take_a_slash(llmux):
    for method in ("TRACE", "PROPFIND"):
        r = requests.request(
            method, llmux.url + "/v1/chat/completions", json={"model": "a"}, timeout=5
        )
        assert_error(r, 405, "method_not_allowed")
        assert "POST" in r.headers["Allow"]
    assert llmux.hook_runs() == []
    for path in ("/health/", "/metrics/"):  # as Flask's routes always took them
        assert requests.get(llmux.url + path, timeout=5).status_code == 200


def test_absolute_form_target_goes_to_the_configured_backend(llmux):
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(1)
    canary.settimeout(0.5)
    try:
        target = f"http://127.0.0.1:{canary.getsockname()[1]}/v1/chat/completions"
        status, _, body = raw_post(
            llmux, target, b'{"model":"a"}', {"Content-Type": "application/json"}
        )
        assert status == 200 and json.loads(body)["x_served_by"] == "a"
        with pytest.raises(OSError):
            canary.accept()
    finally:
        canary.close()
