"""The WSGI-level routed path's header and body rules, against Werkzeug's own.

The end-to-end suite drives every routed behaviour through a real gunicorn;
these pin, case by case, that what Dispatch sends is what the Flask response
it replaced would have sent.
"""

from __future__ import annotations

import pytest
from flask import Response
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from llmux.errors import QueueFull, UnsupportedMediaType
from llmux.web import inbound
from llmux.web.routed import Answer, body_of, error_answer, is_local, merge_headers, wsgi_headers


def flask_headers(status, headers, extra, environ):
    """What Flask sent: the response's headers, ``extra`` set as after_request did."""
    response = Response(iter(()), status=status, direct_passthrough=True)  # a relay: no length
    response.headers.clear()
    for name, value in headers:
        response.headers.add(name, value)
    for name, value in extra:
        if name == "Vary":
            response.vary.add(value)
        else:
            response.headers[name] = value
    return list(response.get_wsgi_headers(environ).items())


@pytest.mark.parametrize(
    "status, headers, extra",
    [
        (
            200,
            [("Content-Type", "text/plain"), ("X-Request-Id", "backend")],
            [("X-Request-Id", "1")],
        ),
        (200, [("Vary", "Accept-Encoding")], [("Vary", "Origin")]),
        (200, [("Vary", "origin, Accept")], [("Vary", "Origin")]),
        (200, [("X-A", "1"), ("x-a", "2"), ("X-B", "3")], [("X-A", "9")]),
        (204, [("Content-Length", "0"), ("X-A", "1")], [("X-Request-Id", "r")]),
        (304, [("Content-Type", "text/plain"), ("ETag", '"x"'), ("Expires", "0")], []),
        (302, [("Location", "/v1/ü?x=1")], []),
        (101, [("Content-Length", "3")], []),
    ],
)
def test_headers_as_werkzeug_sent_them(status, headers, extra):
    environ = EnvironBuilder(path="/v1/chat/completions", method="POST").get_environ()
    expected = flask_headers(status, list(headers), extra, environ)
    answer = Answer(status, list(headers), [b""])
    merged = wsgi_headers(environ, answer)
    merge_headers(merged, extra)
    assert sorted(merged) == sorted(expected)


def test_every_vary_field_is_kept():
    # Werkzeug read only the first of two Vary headers and dropped the second
    headers = [("Vary", "A"), ("X", "1"), ("Vary", "B")]
    merge_headers(headers, [("Vary", "Origin")])
    assert headers == [("Vary", "A, B, Origin"), ("X", "1")]


@pytest.mark.parametrize("status", [200, 404, 599, 207, 499])
def test_status_line_as_werkzeug_writes_it(status):
    assert Answer(status, [], []).status_line == Response(status=status).status


def test_error_answer_is_the_envelope_with_retry_after():
    answer = error_answer(QueueFull("too many waiting for 'a'"))
    body = b"".join(answer.body)
    assert answer.status_line == "429 TOO MANY REQUESTS"
    assert dict(answer.headers) == {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Retry-After": "1",
    }
    assert b'"code":"queue_full"' in body


class Body:
    closed = False

    def __iter__(self):
        yield b"never sent"

    def close(self):
        self.closed = True


@pytest.mark.parametrize(
    "method, status, sent",
    [("HEAD", 200, False), ("GET", 304, False), ("GET", 204, False), ("GET", 200, True)],
)
def test_no_body_where_http_has_none_but_it_is_still_closed(method, status, sent):
    environ = EnvironBuilder(path="/v1/x", method=method).get_environ()
    body = Body()
    out = body_of(environ, Answer(status, [], body))
    assert (list(out) == [b"never sent"]) is sent
    if not sent:
        out.close()
        assert body.closed


def test_request_headers_named_as_werkzeug_names_them():
    environ = EnvironBuilder(
        path="/v1/x",
        method="POST",
        data=b"{}",
        headers={"X-Api-Key": "k", "authorization": "Bearer t", "x-my_odd": "1"},
        content_type="application/json",
    ).get_environ()
    environ["HTTP_CONTENT_TYPE"] = "text/plain"  # a duplicate the server put there
    assert inbound.request_headers(environ) == list(EnvironHeaders(environ))


@pytest.mark.parametrize(
    "content_type, kind",
    [
        ("application/json", "json"),
        ("Application/JSON; charset=utf-8", "json"),
        ("application/vnd.api+json", "json"),
        ("multipart/form-data; boundary=x", "form"),
        ("text/json", None),
        ("", None),
    ],
)
def test_body_kind(content_type, kind):
    if kind is None:
        with pytest.raises(UnsupportedMediaType):
            inbound.body_kind(content_type)
    else:
        assert inbound.body_kind(content_type) == kind


@pytest.mark.parametrize(
    "method, path, local",
    [
        ("GET", "/health", True),
        ("POST", "/v1/models", True),  # Flask's routed view answers it (404)
        ("GET", "/v1/models/a/b", True),
        ("GET", "/llmux/status", True),
        ("OPTIONS", "/v1/chat/completions", True),
        ("POST", "/v1/chat/completions", False),
        ("GET", "/v1/modelsx", False),
        ("GET", "/health/", True),  # strict_slashes is off: Flask answers it
        ("GET", "/metrics//", True),
        ("GET", "/healthz", False),
        ("TRACE", "/v1/chat/completions", True),  # not routed: Flask's 405
        ("PROPFIND", "/v1/chat/completions", True),
        ("GET", "/", False),
    ],
)
def test_what_flask_answers(method, path, local):
    assert is_local({"REQUEST_METHOD": method, "PATH_INFO": path}) is local
