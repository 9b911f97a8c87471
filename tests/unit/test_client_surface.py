"""Pure parts of the client surface: names and aliases, the body's model, CORS, progress."""

from __future__ import annotations

import json

import pytest
import requests

from llmux.config import ConfigError, CorsConfig, parse_config
from llmux.engine.hook_output import Progress
from llmux.errors import Forbidden, InvalidBody, InvalidModel
from llmux.web import bodies, cors

HOOKS = {"wake": "w", "sleep": "s", "alive": "a"}


def config(**top):
    models = top.pop("models", {"a": {"port": 9001, **HOOKS}})
    return parse_config({"models": models, **top}, "x.yaml")


def problems(**top) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config(**top)
    return err.value.problems


# --- names ---


def test_aliases_resolve_to_their_model_and_upstream_names():
    c = config(
        models={
            "a": {"port": 9001, **HOOKS, "aliases": ["alpha", "gpt-4o"]},
            "b": {"port": 9002, **HOOKS, "upstream_model": "Org/B-7B"},
        }
    )
    assert [c.resolve(n) for n in ("a", "alpha", "gpt-4o", "b", "nope", "A")] == [
        "a", "a", "a", "b", None, None,
    ]  # fmt: skip
    assert (c.upstream_name("a"), c.upstream_name("b")) == ("a", "Org/B-7B")


def test_colliding_names_are_all_reported():
    found = problems(
        models={
            "a": {"port": 9001, **HOOKS, "aliases": ["b", "x", "x"]},
            "b": {"port": 9002, **HOOKS, "aliases": ["x"]},
            "c": {"port": 9003, **HOOKS, "aliases": ["bad name"]},
        }
    )
    assert 'models.a.aliases[0]: "b" is already the name of model b' in found
    assert 'models.a.aliases[2]: "x" is already an alias of model a' in found
    assert 'models.b.aliases[0]: "x" is already an alias of model a' in found
    assert any(p.startswith("models.c.aliases: model names must match") for p in found)


def test_stream_loading_is_global_with_a_per_model_override():
    c = config(
        stream_loading=True,
        models={
            "a": {"port": 9001, **HOOKS},
            "b": {"port": 9002, **HOOKS, "stream_loading": False},
        },
    )
    assert (c.loading_progress("a"), c.loading_progress("b")) == (True, False)
    assert config().loading_progress("a") is False


@pytest.mark.parametrize(
    "origins, ok",
    [
        (["https://app.example.com", "http://127.0.0.1:5173", "app://Electron"], True),
        (["*"], False),
        (["https://app.example.com/"], False),
        (["null"], False),
        ("https://app.example.com", False),
    ],
)
def test_cors_origins_are_validated(origins, ok):
    if ok:
        assert config(cors={"allow_origins": origins}).cors.allow_origins[2] == "app://electron"
    else:
        found = problems(cors={"allow_origins": origins})
        assert any(p.startswith("cors.allow_origins") for p in found)


def test_default_ports_are_dropped_as_browsers_do_and_every_bad_origin_is_named():
    c = config(cors={"allow_origins": ["https://A.com:443", "http://b.com:80", "http://c:8080"]})
    assert c.cors.allow_origins == ("https://a.com", "http://b.com", "http://c:8080")
    (found,) = problems(cors={"allow_origins": [5, "https://ok.example", "null", None]})
    assert all(f"(item {i})" in found for i in (0, 2, 3)) and "(item 1)" not in found


# --- the body's model ---


@pytest.mark.parametrize(
    "body, encoding",
    [
        ('{"model":"alias","x":"\\ud800"}', "utf-8"),  # a lone surrogate, escaped: valid JSON
        (' {"a":{"model":1,"model":2} , "n":1e400, "f":1.10,"model" : "alias"}\n', "utf-8"),
        ('\ufeff{"model":"alias"}', "utf-8"),
        ('{"x":"\\"model\\":\\"no\\"","model":"alias","z":[1]}', "utf-8"),
        ('{"é":1,"model":"alias"}', "utf-16"),
    ],
    ids=["escape", "numbers-and-nested-keys", "bom", "model-inside-a-string", "utf-16"],
)
def test_only_the_top_level_model_value_changes(body, encoding):
    raw = body.encode(encoding)
    out = bodies.with_model(raw, "application/json", "Org/M")
    assert out.decode(encoding) == body.replace('"alias"', '"Org/M"')
    assert bodies.read_fields(out, "application/json").model == "Org/M"


def test_json_fields_and_rewrite_keep_everything_else():
    body = '{"model":"alpha","messages":[{"content":"héllo ✓"}],"temperature":0.7,"stream":true}'
    fields = bodies.read_fields(body.encode(), "application/json")
    assert fields == bodies.Fields("alpha", True)
    rewritten = bodies.with_model(body.encode(), "application/json", "Org/M")
    assert json.loads(rewritten) == {**json.loads(body), "model": "Org/M"}
    assert "héllo ✓".encode() in rewritten  # not escaped
    assert bodies.read_fields(b'{"model":"m","stream":"yes"}', "application/json").stream is False


@pytest.mark.parametrize(
    "body, error",
    [
        (b"", InvalidBody),
        (b"[1]", InvalidBody),
        (b'{"model":"a","model":"b"}', InvalidBody),
        (b"{}", InvalidModel),
        (b'{"model":3}', InvalidModel),
        (b"\xff", InvalidBody),
    ],
)
def test_json_bodies_refused(body, error):
    with pytest.raises(error):
        bodies.read_fields(body, "application/json")


def test_json_nested_too_deeply_is_refused_in_plain_words():
    with pytest.raises(InvalidBody, match="nested too deeply") as caught:
        bodies.read_fields(b"[" * 100_000 + b"]" * 100_000, "application/json")
    assert "recursion" not in str(caught.value)


def test_a_forms_model_is_replaced_and_every_other_byte_kept():
    file_bytes = b"RIFF\r\n--not-the-boundary\r\n\x00" + bytes(range(256))
    prepared = requests.Request(
        "POST",
        "http://x/v1/audio/transcriptions",
        files={"file": ("model", file_bytes)},  # a file *named* model is not the field
        data={"model": "alias", "language": "en"},
    ).prepare()
    content_type = prepared.headers["Content-Type"]
    out = bodies.with_model(prepared.body, content_type, "Org/whisper-large")
    assert bodies.read_fields(out, content_type).model == "Org/whisper-large"
    assert out == prepared.body.replace(
        b'name="model"\r\n\r\nalias\r\n', b'name="model"\r\n\r\nOrg/whisper-large\r\n'
    )
    assert file_bytes in out


def test_a_form_with_bare_line_feeds_and_a_boundary_lookalike_in_a_file():
    form = (
        b'--XX\nContent-Disposition: form-data; name="file"; filename="f"\n\nabc\n--XXY\nmore\n'
        b'--XX\nContent-Disposition: form-data; name="model"\n\nalias\n--XX--\n'
    )
    out = bodies.with_model(form, "multipart/form-data; boundary=XX", "Org/M")
    assert out == form.replace(b"\n\nalias\n", b"\n\nOrg/M\n")


# --- CORS ---


def environ(method="OPTIONS", **headers):
    env = {"REQUEST_METHOD": method}
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return env


LISTED = CorsConfig(allow_origins=("https://app.example.com",), max_age=60)


def test_a_preflight_from_a_listed_origin():
    env = environ(
        origin="https://App.Example.com",
        access_control_request_method="post",
        access_control_request_headers="authorization, x-stainless-arch",
        access_control_request_private_network="true",
    )
    assert cors.is_preflight(env)
    status, headers = cors.preflight(env, LISTED)
    got = dict(headers)
    assert status == 204
    assert got["Access-Control-Allow-Origin"] == "https://App.Example.com"
    assert got["Access-Control-Allow-Methods"] == "POST"
    assert got["Access-Control-Allow-Headers"] == "authorization, x-stainless-arch"
    assert got["Access-Control-Max-Age"] == "60"
    assert got["Access-Control-Allow-Private-Network"] == "true"


@pytest.mark.parametrize(
    "settings, origin, method",
    [
        (CorsConfig(), "https://app.example.com", "POST"),
        (LISTED, "https://evil.example", "POST"),
        (LISTED, "https://app.example.com", "TRACE"),
    ],
)
def test_preflights_refused(settings, origin, method):
    env = environ(origin=origin, access_control_request_method=method)
    with pytest.raises(Forbidden):
        cors.preflight(env, settings)


def test_actual_responses_carry_headers_only_for_listed_origins():
    vary = [("Vary", "Origin")]  # with CORS on, every answer depends on the Origin
    assert cors.response_headers(environ("POST", origin="https://evil.example"), LISTED) == vary
    assert cors.response_headers(environ("POST"), LISTED) == vary
    assert cors.response_headers(environ("POST", origin="https://x.example"), CorsConfig()) == []
    listed = dict(cors.response_headers(environ("POST", origin="https://app.example.com"), LISTED))
    assert listed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Retry-After" in listed["Access-Control-Expose-Headers"]
    assert cors.is_cors_header("Access-Control-Allow-Origin") and not cors.is_cors_header("Vary")
    assert not cors.is_preflight(environ(origin="https://app.example.com"))


# --- a wake hook's own progress ---


def test_progress_lines_split_across_reads_and_streams():
    progress = Progress()
    out, err = progress.reader(), progress.reader()
    out(b"loading weights\nLLMUX_PROG")
    err(b"LLMUX_PROGRESS 0.1\n")
    assert progress.fraction == 0.1
    out(b"RESS 0.42\n")
    assert progress.fraction == 0.42
    for junk in (b"LLMUX_PROGRESS\n", b"LLMUX_PROGRESS abc\n", b"xx LLMUX_PROGRESS 0.9\n"):
        out(junk)
    assert progress.fraction == 0.42
    out(b"LLMUX_PROGRESS 3\n")
    assert progress.fraction == 1.0
    out(b"x" * 100_000)  # a long line without newline is not kept whole
    out(b"\nLLMUX_PROGRESS .5\n")
    assert progress.fraction == 0.5
