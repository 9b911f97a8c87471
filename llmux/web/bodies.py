"""A routed request's body: the fields llmux reads from it, and the one it may change.

Usage::

    fields = read_fields(body, content_type)   # InvalidBody, InvalidModel
    fields.model, fields.stream                 # "llama", True
    body = with_model(body, content_type, "Qwen/Qwen2.5-7B-Instruct")   # upstream_model

A body is either a JSON object (every OpenAI and Anthropic endpoint but the
uploads) or a ``multipart/form-data`` form (:mod:`llmux.web.forms`). Only
``model`` is ever changed, and only when the configured model has an
``upstream_model`` or was asked for by an alias; every other byte of a form,
and every other member of a JSON object, reaches the backend as sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import InvalidBody, InvalidModel, clip
from . import forms


@dataclass(frozen=True)
class Fields:
    """``model`` as sent, exactly; ``stream`` true when the client asked for SSE."""

    model: str
    stream: bool = False


def read_fields(body: bytes, content_type: str) -> Fields:
    """The fields of a JSON or form body (``content_type`` says which)."""
    if forms.is_form(content_type):
        return Fields(forms.model_of_form(body, content_type))
    data = _json_object(body)
    return Fields(_model_of(data), data.get("stream") is True)


def with_model(body: bytes, content_type: str, model: str) -> bytes:
    """``body`` with its ``model`` set to ``model`` (already read by :func:`read_fields`).

    Only the value of the top-level ``model`` member changes: every other
    byte of the JSON text (numbers, escapes, duplicate keys deeper down) or of
    the form reaches the backend as the client wrote it.
    """
    if forms.is_form(content_type):
        return forms.with_field(body, content_type, "model", model)
    encoding = json.detect_encoding(body)
    text = body.decode(encoding)
    start, end = _model_span(text)
    return (text[:start] + json.dumps(model) + text[end:]).encode(encoding)


_WS = " \t\n\r"
_DECODER = json.JSONDecoder()


def _model_span(text: str) -> tuple[int, int]:
    """Where the top-level ``model`` string value is in a JSON object text: ``[start, end)``.

    For a text :func:`read_fields` accepted (RFC 8259 grammar: members are
    ``string ws : ws value`` separated by ``,``); each other value is skipped
    with the standard decoder.
    """
    i = _skip(text, 0)
    if text.startswith("\ufeff", i):
        i = _skip(text, i + 1)
    i = _skip(text, i + 1)  # past "{"
    while True:
        key, i = json.decoder.scanstring(text, i + 1)  # past the key's opening quote
        i = _skip(text, _skip(text, i) + 1)  # past ":"
        _, end = _DECODER.raw_decode(text, i)
        if key == "model":
            return i, end
        i = _skip(text, _skip(text, end) + 1)  # past ","


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _json_object(body: bytes) -> dict:
    if not body:
        raise InvalidBody("request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise InvalidBody("request body is not valid UTF-8") from None
    except RecursionError:  # Python's own words would name its recursion limit
        raise InvalidBody("request body is JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidBody(f"request body is not valid JSON: {clip(str(exc), 80)}") from None
    if not isinstance(data, dict):
        raise InvalidBody(f"request body must be a JSON object, got {type(data).__name__}")
    # A second top-level "model" (which a first-wins backend would read) needs
    # UTF-8 text to say "model" twice, or to escape a letter of it (\\u006d);
    # only then, or for UTF-16 and -32, does the slower parse that sees every key run.
    maybe_twice = body.count(b'"model"') > 1 or b"\\u" in body
    utf8 = json.detect_encoding(body) in ("utf-8", "utf-8-sig")
    if (maybe_twice or not utf8) and _model_keys(body) > 1:
        raise InvalidBody("request body has more than one 'model' key")
    return data


def _model_keys(body: bytes) -> int:
    """How many ``model`` keys the top-level object of a valid JSON ``body`` has."""
    last_pairs: list = []

    def keep_pairs(pairs):
        last_pairs[:] = pairs  # the top-level object is decoded last
        return dict(pairs)

    json.loads(body, object_pairs_hook=keep_pairs)
    return sum(1 for key, _ in last_pairs if key == "model")


def _model_of(data: dict) -> str:
    """The ``model`` of a JSON object body (exact string, no trimming or folding)."""
    if "model" not in data:
        raise InvalidModel("request body has no 'model'")
    model = data["model"]
    if not isinstance(model, str) or not model:
        raise InvalidModel(f"'model' must be a non-empty string, got {clip(json.dumps(model))}")
    return model
