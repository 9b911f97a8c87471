"""Bad input and hostile clients (catalogue B1-B17, S1-S13): refused early, no shell reached."""

from __future__ import annotations

import ast
import socket
import string
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import free_port

from .test_errors import assert_error

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def raw(server, data: bytes, *, read_timeout=5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass  # a reset after the answer, or instead of it
        return out


def post_head(length: int | str, extra=b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


def test_b1_no_body_at_all(llmux):
    data = raw(
        llmux,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 400") and b"invalid_body" in data


def test_b8_a_huge_declared_body_is_refused_before_reading_it(llmux_factory):
    server = llmux_factory(proxy={"max_body_bytes": 2**20})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(post_head(100 * 2**20) + b'{"model": "a", ')
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # ends: the connection is not kept for a next request
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer
        assert time.monotonic() - started < 2
    assert server.hook_runs() == []
    assert server.chat("a").status_code == 200


def test_b10_a_body_dribbled_byte_by_byte_gets_408_at_the_total_deadline(llmux_factory):
    server = llmux_factory(proxy={"body_timeout": 1.5})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head(1000))
        started = time.monotonic()
        sock.settimeout(0.3)
        answer = b""
        while b"request_timeout" not in answer and time.monotonic() - started < 6:
            try:
                if not answer:
                    sock.sendall(b" ")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started  # the body may follow the headers a moment later
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:100]
    assert 1.3 < took < 3
    assert server.hook_runs() == []
    # meanwhile normal requests were served
    assert server.chat("a").status_code == 200


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(200)),  # too many fields
        b"X-Big: " + b"x" * 16384 + b"\r\n",  # one huge field
    ],
    ids=["200-fields", "16k-field"],
)
def test_b11_absurd_headers_are_refused_by_gunicorn(llmux, head):
    data = raw(llmux, post_head(14, head) + b'{"model": "a"}')
    assert data.split(b" ")[1] in (b"400", b"431"), data[:80]
    assert llmux.hook_runs() == []
    assert llmux.chat("a").status_code == 200


def test_b11_a_huge_request_line(llmux):
    data = raw(llmux, b"POST /v1/chat/completions?" + b"x" * 8192 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data == b"" or data.split(b" ")[1] in (b"400", b"414"), data[:80]
    assert llmux.hook_runs() == [] and llmux.chat("a").status_code == 200


def test_b12_a_lone_surrogate_is_a_model_that_is_not_there(llmux):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions",
        data=b'{"model": "a\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 404, "model_not_found", param="model")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100000, b'{"a":' * 100000, b'{"model": 1e999999}'],
    ids=["deep-array", "deep-object", "huge-number"],
)
def test_b14_pathological_json_is_a_400(llmux, body):
    r = llmux.session.post(
        llmux.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "Traceback" not in r.text
    assert llmux.chat("a").status_code == 200


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 14\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 14\r\nContent-Length: 15\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: xchunked\r\n",
    ],
    ids=["cl-te", "two-cl", "chunked-twice", "xchunked"],
)
def test_b16_smuggling_shaped_framing_is_refused(llmux, framing):
    hidden = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b'\r\nContent-Length: 14\r\n\r\n{"model": "b"}'
    )
    data = raw(
        llmux,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n" + framing + b"\r\n" + b'{"model": "a"}' + hidden,
    )
    assert data.split(b" ")[1] in (b"400", b"501"), data[:80]  # 501: unknown coding
    assert data.count(b"HTTP/1.1 ") == 1 and llmux.hook_runs() == [], "a smuggled request ran"


def test_b17_a_truncated_body_then_a_client_gone(llmux):
    with socket.create_connection(("127.0.0.1", llmux.port), timeout=5) as sock:
        sock.sendall(post_head(5000) + b'{"model": "a", "x": "')
    time.sleep(0.5)  # what must not happen (a hook, a forward) would have by now
    assert llmux.hook_runs() == [] and llmux.backend_hits("a") == []
    assert "Traceback" not in llmux.log_text()
    assert llmux.chat("b").status_code == 200


# --- security ---

CANARY_NAMES = ["$(touch {c})", "`touch {c}`", "a; touch {c}", "a && touch {c}", "a|touch {c}",
                "a\ntouch {c}", "${{IFS}}", "'", '"', "*", "../a", "-rf", "--help", "a$LLMUX_MODEL",
                "a;id"]  # fmt: skip


def test_s1_shell_metacharacters_in_model_reach_no_hook(llmux, tmp_path):
    canary = tmp_path / "pwned"
    for name in CANARY_NAMES:
        r = llmux.chat(name.format(c=canary))
        assert r.status_code == 404
    assert not canary.exists()
    assert llmux.hook_runs() == []


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(alphabet=st.characters(), max_size=40))
def test_s1_any_model_name_but_a_configured_one_is_refused(llmux, name):
    r = llmux.post(body={"model": name, "messages": []})
    if name in ("a", "b", "c"):
        assert r.status_code == 200
    else:
        assert r.status_code in (400, 404)
    for _, _, _, model, _ in llmux.events():
        assert model in ("a", "b", "c")


def test_s1_only_the_hook_runner_starts_processes():
    """Every subprocess call site in llmux, found by reading its source: the process
    starters live in engine/spawn.py, and only the hook runner calls them, with
    ``["/bin/sh", "-c", snippet]``."""
    starters = ("Popen", "run", "call", "check_call", "check_output", "system", "popen",
                "spawnv", "execv", "execvp", "posix_spawn", "posix_spawnp", "fork")  # fmt: skip
    sites, starts = [], []
    for path in (ROOT / "llmux").rglob("*.py"):
        tree = ast.parse(path.read_text())
        where = path.relative_to(ROOT / "llmux").as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                owner = getattr(fn.value, "id", "") if isinstance(fn, ast.Attribute) else ""
                if name in starters and owner in ("subprocess", "os"):
                    sites.append((where, name))
                if name == "start" and owner == "spawn":
                    starts.append((where, node))
    assert sorted(sites) == [
        ("engine/spawn.py", "Popen"),
        ("engine/spawn.py", "posix_spawn"),
        ("ops/cli.py", "execv"),
    ], sites
    assert [w for w, _ in starts] == ["engine/hooks.py"], starts
    call = starts[0][1]
    argv = call.args[0]
    assert isinstance(argv, ast.List) and [ast.literal_eval(e) for e in argv.elts[:2]] == [
        "/bin/sh",
        "-c",
    ]
    assert isinstance(argv.elts[2], ast.Name)  # the snippet variable, from the config
    assert not any(kw.arg == "shell" for kw in call.keywords)
    spawn_source = (ROOT / "llmux" / "engine" / "spawn.py").read_text()
    assert "shell=" not in spawn_source


def test_s3_the_hook_environment_holds_nothing_from_requests(llmux_factory):
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(5)
    canary.settimeout(0.2)
    proxy = f"http://127.0.0.1:{canary.getsockname()[1]}"
    server = llmux_factory(env={"HTTP_PROXY": proxy, "http_proxy": proxy, "ALL_PROXY": proxy})
    try:
        dump = server.dir / "hook-env"
        server.fault("wake", "a", f"env > {dump}")
        r = server.post(
            body={"model": "a"},
            headers={
                "Proxy": "http://127.0.0.1:9/",
                "X-Llmux-Model": "evil",
                "Authorization": "Bearer sk-client",
            },
        )
        assert r.status_code == 200  # went straight to the backend, not through HTTP_PROXY
        with pytest.raises(OSError):
            canary.accept()
        env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
        assert env["LLMUX_MODEL"] == "a" and env["LLMUX_HOOK"] == "wake"
        assert not [k for k in env if k.startswith("HTTP_") and k != "HTTP_PROXY"]
        assert "evil" not in dump.read_text() and "sk-client" not in dump.read_text()
    finally:
        canary.close()


def test_s6_hop_by_hop_and_llmux_headers_never_reach_the_backend(llmux):
    r = llmux.post(
        body={"model": "a", "fake": {"echo_headers": True}},
        headers={
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic eA==",
            "X-Kept": "yes",
        },
    )
    seen = {k.lower() for k in r.json()["x_headers"]}
    for header in ("x-secret", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert header not in seen
    assert "x-kept" in seen and "x-request-id" in seen


def test_s7_no_cors_for_foreign_origins(llmux):
    r = requests.options(
        llmux.url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=5,
    )
    assert "Access-Control-Allow-Origin" not in r.headers
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]["message"]
    assert llmux.hook_runs() == []


def test_s9_secrets_and_prompts_stay_out_of_logs(llmux_factory):
    server = llmux_factory(api_keys=["sk-CANARY-KEY"])
    r = server.post(
        body={"model": "a", "messages": [{"role": "user", "content": "PROMPT-CANARY"}]},
        headers={"Authorization": "Bearer sk-CANARY-KEY", "X-Api-Key": "sk-CANARY-2"},
    )
    assert r.status_code == 200
    server.post(body={"model": "a"}, headers={"Authorization": "Bearer sk-CANARY-WRONG"})
    server.terminate()
    text = server.log_text()
    for canary in ("sk-CANARY-KEY", "sk-CANARY-2", "sk-CANARY-WRONG", "PROMPT-CANARY"):
        assert canary not in text


def test_s12_error_bodies_do_not_leak_internals(llmux):
    llmux.fault("wake", "c", "exit 0")
    llmux.fault("alive", "c", "exit 0")
    port = str(llmux.port_of("c"))
    bodies = [
        llmux.chat("c").text,
        llmux.chat("zz").text,
        llmux.session.post(llmux.url + "/v1/chat/completions", data=b"[").text,
    ]
    for body in bodies:
        assert port not in body and "/tmp" not in body and "hook.sh" not in body
        assert "Traceback" not in body


def test_s13_a_public_address_without_api_keys_is_warned_about(llmux_factory):
    server = llmux_factory(extra_args=("--host", "0.0.0.0"))
    assert any(
        "without api_keys" in r["message"] for r in server.log_records() if r["level"] == "WARNING"
    )


def test_s13_loopback_is_the_default(tmp_path):
    from llmux.config import parse_config

    config = parse_config(
        {"models": {"m": {"port": free_port(), "wake": "a", "sleep": "b", "alive": "c"}}},
        str(tmp_path / "x.yaml"),
    )
    assert config.host == "127.0.0.1"


def test_punctuation_paths_are_not_routed(llmux):
    for char in (c for c in string.punctuation if c not in "/?"):
        data = raw(
            llmux,
            f"POST /v1/chat/completions{char}x HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 14\r\nConnection: close\r\n\r\n"
            '{"model": "a"}'.encode(),
        )
        assert data.split(b" ")[1] in (b"404", b"400"), (char, data[:60])
    assert llmux.hook_runs() == []
