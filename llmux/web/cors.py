"""Cross-origin resource sharing, opt-in: which browser pages may call llmux.

Usage::

    if is_preflight(environ):
        status, headers = preflight(environ, config.cors)   # 204, or Forbidden
    headers += response_headers(environ, config.cors)     # on every other answer

Off by default: no ``Access-Control-*`` header is ever sent, a preflight gets
403, and a browser refuses to let another site's page read llmux's answers
(:func:`llmux.web.inbound.refuse_cross_site` refuses the requests themselves).
With ``cors.allow_origins``, pages from exactly those origins may call every
endpoint. The protocol is the Fetch Standard's CORS protocol
(https://fetch.spec.whatwg.org/#http-cors-protocol); the private-network
answer is Chrome's Private Network Access
(https://wicg.github.io/private-network-access/): a public page calling
llmux on loopback asks for it.

Backends' own ``Access-Control-*`` headers never reach the client (vLLM's
default is ``*``): llmux answers for the whole server.
"""

from __future__ import annotations

from ..errors import Forbidden, clip

# what llmux adds that a page's script may read
EXPOSED = "X-Request-Id, Retry-After, X-Llmux-Queue-Wait-Ms, X-Llmux-Model-State"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


def origin_of(environ: dict) -> str | None:
    origin = environ.get("HTTP_ORIGIN")
    return origin.strip() if origin is not None else None


def allowed(origin: str | None, cors) -> bool:
    """Whether ``origin`` (the request's ``Origin``) is one of ``cors.allow_origins``.

    Origins compare as RFC 6454 serialises them: scheme and host in lower case.
    """
    return origin is not None and origin.lower() in cors.allow_origins


def is_preflight(environ: dict) -> bool:
    """An ``OPTIONS`` request with ``Origin`` and ``Access-Control-Request-Method``."""
    return (
        environ.get("REQUEST_METHOD") == "OPTIONS"
        and "HTTP_ORIGIN" in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
    )


def preflight(environ: dict, cors) -> tuple[int, list[tuple[str, str]]]:
    """The answer to a preflight: ``(204, headers)``; :class:`Forbidden` when not allowed.

    The requested method must be one llmux serves; the requested headers are
    allowed as asked (the origin is trusted: the OpenAI SDKs send
    ``x-stainless-*`` headers that change between versions).
    """
    origin = origin_of(environ)
    if not cors.allow_origins:
        raise Forbidden(
            "cross-origin requests are not enabled; list the page's origin in "
            "cors.allow_origins to allow it"
        )
    if not allowed(origin, cors):
        raise Forbidden(f"origin {clip(origin, 64)} is not in cors.allow_origins")
    method = environ["HTTP_ACCESS_CONTROL_REQUEST_METHOD"].strip().upper()
    if method not in METHODS:
        raise Forbidden(f"method {clip(method, 16)} is not allowed")
    headers = [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", method),
        ("Access-Control-Max-Age", str(cors.max_age)),
        ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ]
    asked = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").strip()
    if asked:
        headers.append(("Access-Control-Allow-Headers", asked))
    if environ.get("HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK", "").lower() == "true":
        headers.append(("Access-Control-Allow-Private-Network", "true"))
    return 204, headers


def response_headers(environ: dict, cors) -> list[tuple[str, str]]:
    """The headers that let a listed origin's page read this answer.

    With CORS on, every answer varies by ``Origin`` (a cache must not hand one
    origin's answer to another); with it off, no header is added.
    """
    if not cors.allow_origins:
        return []
    origin = origin_of(environ)
    if not allowed(origin, cors):
        return [("Vary", "Origin")]
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Expose-Headers", EXPOSED),
        ("Vary", "Origin"),
    ]


def is_cors_header(name: str) -> bool:
    """A backend's ``Access-Control-*`` header, which llmux never passes on."""
    return name[:15].lower() == "access-control-"
