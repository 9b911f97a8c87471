"""The ``model`` field of a ``multipart/form-data`` request body.

Usage::

    model = model_of_form(body, environ["CONTENT_TYPE"])   # InvalidBody, InvalidModel
    body = with_field(body, environ["CONTENT_TYPE"], "model", "Qwen/Qwen2.5-7B")

The OpenAI endpoints that upload files (``/v1/audio/transcriptions``,
``/v1/audio/translations``, ``/v1/images/edits``, ``/v1/images/variations``)
take a form, not JSON, with ``model`` as one of its fields. The body is parsed
here only to find that field, with Werkzeug's incremental multipart decoder
(RFC 7578), and is forwarded byte for byte; file parts are passed over
without being copied. :func:`with_field` replaces one field's value and
leaves every other byte of the form as it was.
"""

from __future__ import annotations

import re

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ..errors import InvalidBody, InvalidModel, clip

MAX_FIELD_BYTES = 1024  # a model name is at most 128 characters


def is_form(content_type: str) -> bool:
    return parse_options_header(content_type)[0].lower() == "multipart/form-data"


def _boundary(content_type: str) -> bytes:
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise InvalidBody("multipart/form-data without a boundary")
    return boundary.encode("latin-1")


def model_of_form(body: bytes, content_type: str) -> str:
    """The form's ``model`` field, exactly as sent; refuses a form with none or two."""
    decoder = MultipartDecoder(_boundary(content_type), max_form_memory_size=None)
    decoder.receive_data(body)
    decoder.receive_data(None)
    found: list[bytes] = []
    current: bytearray | None = None
    try:
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData | Epilogue):
                break
            if isinstance(event, Field):
                current = bytearray() if event.name == "model" else None
            elif isinstance(event, File):
                current = None
            elif isinstance(event, Data) and current is not None:
                current += event.data
                if len(current) > MAX_FIELD_BYTES:
                    raise InvalidModel("the form's 'model' field is too long")
                if not event.more_data:
                    found.append(bytes(current))
                    current = None
    except ValueError as exc:  # werkzeug's word for a malformed form
        raise InvalidBody(f"request body is not a valid form: {clip(str(exc), 80)}") from None
    if len(found) > 1:
        raise InvalidBody("the form has more than one 'model' field")
    if not found:
        raise InvalidModel("the form has no 'model' field")
    try:
        model = found[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModel("the form's 'model' field is not valid UTF-8") from None
    if not model:
        raise InvalidModel("'model' must be a non-empty string")
    return model


def with_field(body: bytes, content_type: str, name: str, value: str) -> bytes:
    """``body`` with the value of the non-file field ``name`` set to ``value``.

    For a form :func:`model_of_form` accepted. RFC 2046 §5.1.1: a part ends
    where a line break and ``--boundary`` begin, followed by ``--`` or the end
    of the line; the boundary never occurs so inside a part, so splitting
    there finds every part without decoding any. Line breaks may be CRLF or,
    as Werkzeug also accepts, LF. The result is read again, and a form whose
    field could not be set this way is refused (400) rather than sent unchanged.
    """
    boundary = _boundary(content_type)
    delimiter = re.compile(rb"(\r?\n--" + re.escape(boundary) + rb")(?=--|[ \t]*\r?\n)")
    pieces = delimiter.split(b"\r\n" + body)  # [preamble, delim, part, delim, ..., epilogue]
    for i in range(2, len(pieces) - 1, 2):
        match = _HEAD_END.search(pieces[i])
        if match and _field_name(pieces[i][: match.start()]) == name:
            pieces[i] = pieces[i][: match.end()] + value.encode("utf-8")
    out = b"".join(pieces)[2:]
    if model_of_form(out, content_type) != value:
        raise InvalidBody(f"the form's '{clip(name, 32)}' field could not be rewritten")
    return out


_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _field_name(head: bytes) -> str | None:
    """The ``name`` of a part from its header block, or None for a file or no name."""
    for line in re.split(r"\r?\n", head.decode("latin-1")):
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == "content-disposition":
            options = parse_options_header(value)[1]
            return None if "filename" in options else options.get("name")
    return None
