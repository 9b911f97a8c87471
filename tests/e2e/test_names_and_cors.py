"""Aliases, the upstream name, and opt-in CORS (client-surface issue, items 4 and 5).

Through a real llmux (gunicorn, gevent worker) and real hooks; the official
``openai`` SDK for aliases, headless Chromium for CORS (the browser decides
what a page may read, so only a browser proves CORS works).
"""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading

import pytest
import requests
import yaml

from tests.support import free_port

from .conftest import model_entry
from .test_errors import assert_error
from .test_status_page import run_chromium

pytestmark = pytest.mark.e2e


def aliased(llmux_factory, **a_extra):
    ports = [free_port() for _ in range(2)]
    while ports[0] == ports[1]:
        ports[1] = free_port()
    a = {**model_entry(ports[0]), "aliases": ["alpha", "gpt-4o-mini"], **a_extra}
    return llmux_factory({"a": a, "b": model_entry(ports[1])})


# --- aliases and upstream_model ---


def test_an_alias_is_served_by_its_model_without_a_switch(llmux_factory):
    from openai import OpenAI

    llmux = aliased(llmux_factory)
    client = OpenAI(base_url=llmux.url + "/v1", api_key="unused", max_retries=0)
    first = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}])
    assert first.choices[0].message.content
    for name in ("alpha", "gpt-4o-mini", "alpha"):
        chunks = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert llmux.hook_runs() == [("wake", "a")], "an alias of the awake model cost a switch"
    # the backend is asked for the model's configured name
    assert {hit["model"] for hit in llmux.backend_hits("a")} == {"a"}
    # logs name the model, and the alias the client used
    finished = [r for r in llmux.log_records() if r.get("event") == "request_finished"]
    assert [(r["model"], r.get("alias")) for r in finished] == [
        ("a", None),
        ("a", "alpha"),
        ("a", "gpt-4o-mini"),
        ("a", "alpha"),
    ]


def test_models_lists_aliases_and_answers_for_them(llmux_factory):
    llmux = aliased(llmux_factory)
    listed = requests.get(llmux.url + "/v1/models", timeout=5).json()["data"]
    by_id = {m["id"]: m for m in listed}
    assert [m["id"] for m in listed] == ["a", "b", "alpha", "gpt-4o-mini"]
    assert by_id["a"]["aliases"] == ["alpha", "gpt-4o-mini"]
    assert by_id["alpha"]["alias_of"] == "a" and by_id["alpha"]["object"] == "model"
    one = requests.get(llmux.url + "/v1/models/gpt-4o-mini", timeout=5).json()
    assert one["alias_of"] == "a" and one["state"] == "asleep"
    r = requests.get(llmux.url + "/v1/models/nope", timeout=5)
    assert_error(r, 404, "model_not_found", param="model")
    # the admin API takes aliases too
    woke = llmux.admin("POST", "/models/alpha/wake")
    assert woke.status_code == 200 and woke.json()["model"] == "a"


def test_upstream_model_is_what_the_backend_receives_in_json_and_forms(llmux_factory, tmp_path):
    from openai import OpenAI

    llmux = aliased(llmux_factory, upstream_model="Qwen/Qwen2.5-7B-Instruct")
    client = OpenAI(base_url=llmux.url + "/v1", api_key="unused", max_retries=0)
    for name in ("a", "alpha"):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "é"}])
    hits = llmux.backend_hits("a")
    assert [h["model"] for h in hits] == ["Qwen/Qwen2.5-7B-Instruct"] * 2
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    with audio.open("rb") as fh:
        answer = client.audio.transcriptions.with_raw_response.create(
            model="gpt-4o-mini", file=fh, language="en"
        ).http_response.json()
    assert answer["x_form_fields"] == {
        "model": ["Qwen/Qwen2.5-7B-Instruct"],
        "language": ["en"],
    }
    assert answer["x_files"]["file"] == hashlib.sha256(audio.read_bytes()).hexdigest()
    finished = [r for r in llmux.log_records() if r.get("event") == "request_finished"]
    assert {r["model"] for r in finished} == {"a"}, "logs keep the configured name"


def test_llmux_check_names_colliding_names(tmp_path):
    config = {
        "models": {
            "a": {**model_entry(18101), "aliases": ["shared", "b"]},
            "b": {**model_entry(18102), "aliases": ["shared", "b2", "b2"]},
        }
    }
    path = tmp_path / "llmux.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [sys.executable, "-m", "llmux", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    problems = out.stderr + out.stdout
    assert 'models.a.aliases[1]: "b" is already the name of model b' in problems
    assert 'models.b.aliases[0]: "shared" is already an alias of model a' in problems
    assert 'models.b.aliases[2]: "b2" is already an alias of model b' in problems


# --- CORS ---

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
fetch(%(url)r, {
  method: "POST",
  headers: {"Content-Type": "application/json", "Authorization": "Bearer k",
            "x-stainless-lang": "js", "x-stainless-os": "Linux"},
  body: JSON.stringify({model: "a", messages: [{role: "user", content: "hi"}]}),
}).then(async (r) => {
  const j = await r.json();
  document.getElementById("out").textContent = "status=" + r.status + " served_by=" +
    j.x_served_by + " state=" + r.headers.get("X-Llmux-Model-State");
}).catch((e) => { document.getElementById("out").textContent = "blocked " + e.name; });
</script></body></html>"""


@pytest.fixture
def page_origin():
    """A web server on another loopback port, serving PAGE: a different origin."""
    body = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = body["page"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield origin, body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def page_result(tmp_path, origin, body, llmux) -> str:
    body["page"] = PAGE % {"url": llmux.url + "/v1/chat/completions"}
    dom = run_chromium(tmp_path, origin + "/", "--dump-dom").stdout.decode()
    return dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]


def test_a_page_from_a_listed_origin_calls_llmux_in_chromium(llmux_factory, page_origin, tmp_path):
    origin, body = page_origin
    llmux = llmux_factory(cors={"allow_origins": [origin]}, api_keys=["k"])
    assert page_result(tmp_path, origin, body, llmux) == "status=200 served_by=a state=asleep"


def test_a_page_from_an_unlisted_origin_is_blocked_in_chromium(
    llmux_factory, page_origin, tmp_path
):
    origin, body = page_origin
    llmux = llmux_factory(cors={"allow_origins": ["http://elsewhere.example"]}, api_keys=["k"])
    assert page_result(tmp_path, origin, body, llmux) == "blocked TypeError"
    assert llmux.hook_runs() == [], "a blocked page switched a model"
    llmux_off = llmux_factory(api_keys=["k"])  # no cors block at all
    assert page_result(tmp_path, origin, body, llmux_off) == "blocked TypeError"
    assert llmux_off.hook_runs() == []


def preflight(url, origin, method="POST", headers="authorization, content-type, x-stainless-os"):
    return requests.options(
        url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
        timeout=5,
    )


CHAT_A = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}


def test_preflight_answers(llmux_factory):
    listed = "https://app.example.com"
    llmux = llmux_factory(cors={"allow_origins": [listed], "max_age": 120})
    r = preflight(llmux.url, listed)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == listed
    assert r.headers["Access-Control-Allow-Methods"] == "POST"
    asked = r.headers["Access-Control-Allow-Headers"]
    assert asked == "authorization, content-type, x-stainless-os"
    assert r.headers["Access-Control-Max-Age"] == "120"
    assert "Origin" in r.headers["Vary"]
    assert_error(preflight(llmux.url, "https://evil.example"), 403, "forbidden")
    assert_error(preflight(llmux.url, listed, method="CONNECT"), 403, "forbidden")
    # a real request from the listed origin carries the origin and what it may read
    r = llmux.post(body=CHAT_A, headers={"Origin": listed, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == listed
    assert "X-Llmux-Queue-Wait-Ms" in r.headers["Access-Control-Expose-Headers"]
    # an unlisted one is refused before anything is switched
    foreign = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    r = llmux.post(body={**CHAT_A, "model": "b"}, headers=foreign)
    assert_error(r, 403, "forbidden")
    assert llmux.hook_runs() == [("wake", "a")]
    # the admin API is for no other origin: its preflight is refused, its answers unreadable
    r = requests.options(
        llmux.url + "/llmux/status",
        headers={"Origin": listed, "Access-Control-Request-Method": "GET"},
        timeout=5,
    )
    assert_error(r, 403, "forbidden")
    r = llmux.admin("GET", "/status", headers={"Origin": listed})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    # OPTIONS that is not a preflight: what may be used, never forwarded
    r = requests.options(llmux.url + "/v1/chat/completions", timeout=5)
    assert r.status_code == 204 and "POST" in r.headers["Allow"]


def test_without_cors_a_preflight_gets_a_clear_403(llmux):
    r = preflight(llmux.url, "https://app.example.com")
    assert_error(r, 403, "forbidden")
    assert "cors.allow_origins" in r.json()["error"]["message"]
    assert "Access-Control-Allow-Origin" not in r.headers
    assert llmux.hook_runs() == []


ADMIN_PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
fetch(%(url)r, {method: "POST", mode: "no-cors"})
  .then(() => { document.getElementById("out").textContent = "sent"; })
  .catch((e) => { document.getElementById("out").textContent = "failed " + e.name; });
</script></body></html>"""


def test_a_page_of_another_site_cannot_use_the_admin_api(llmux_factory, page_origin, tmp_path):
    origin, body = page_origin
    llmux = llmux_factory(cors={"allow_origins": [origin]})  # CORS does not open the admin API
    body["page"] = ADMIN_PAGE % {"url": llmux.url + "/llmux/models/a/wake"}
    dom = run_chromium(tmp_path, origin + "/", "--dump-dom").stdout.decode()
    assert '<pre id="out">sent</pre>' in dom
    assert '"POST /llmux/models/a/wake HTTP/1.1\\" 403' in llmux.log_text()
    assert llmux.hook_runs() == []
    foreign = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    for path in ("/models/a/wake", "/models/a/sleep", "/reload"):
        assert_error(llmux.admin("POST", path, headers=foreign), 403, "forbidden")
    assert llmux.admin("POST", "/models/a/wake").status_code == 200  # curl, llmux wake
    assert llmux.admin("GET", "/status", headers=foreign).status_code == 200
    assert llmux.hook_runs() == [("wake", "a")]
