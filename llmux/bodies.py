"""A routed request's body: the fields llmux reads from it, and the one it may change.

Usage::

    fields = read_fields(body, content_type)   # InvalidBody, InvalidModel
    fields.model, fields.stream                 # "llama", True
    body = with_model(body, content_type, "Qwen/Qwen2.5-7B-Instruct")   # upstream_model

A body is either a JSON object (every OpenAI and Anthropic endpoint but the
uploads) or a ``multipart/form-data`` form (:mod:`llmux.forms`). Only
``model`` is ever changed, and only when the configured model has an
``upstream_model`` or was asked for by an alias; every other byte of a form,
and every other member of a JSON object, reaches the backend as sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import forms
from .errors import InvalidBody, InvalidModel, clip


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

    A JSON object is serialised again (members in their order, numbers as
    Python reads them, no ASCII escaping); a form keeps every byte but the field.
    """
    if forms.is_form(content_type):
        return forms.with_field(body, content_type, "model", model)
    data = json.loads(body)
    data["model"] = model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_object(body: bytes) -> dict:
    if not body:
        raise InvalidBody("request body is empty; expected a JSON object")
    last_pairs: list = []

    def keep_pairs(pairs):
        last_pairs[:] = pairs  # the top-level object is decoded last
        return dict(pairs)

    try:
        data = json.loads(body, object_pairs_hook=keep_pairs)
    except UnicodeDecodeError:
        raise InvalidBody("request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidBody(f"request body is not valid JSON: {clip(str(exc), 80)}") from None
    if not isinstance(data, dict):
        raise InvalidBody(f"request body must be a JSON object, got {type(data).__name__}")
    if sum(1 for key, _ in last_pairs if key == "model") > 1:
        raise InvalidBody("request body has more than one 'model' key")
    return data


def _model_of(data: dict) -> str:
    """The ``model`` of a JSON object body (exact string, no trimming or folding)."""
    if "model" not in data:
        raise InvalidModel("request body has no 'model'")
    model = data["model"]
    if not isinstance(model, str) or not model:
        raise InvalidModel(f"'model' must be a non-empty string, got {clip(json.dumps(model))}")
    return model
