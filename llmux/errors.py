"""The one exception hierarchy llmux answers clients with.

Every failure that reaches a client is an :class:`LlmuxError`. Library errors
(hooks, ``requests``, ``urllib3``, JSON) are translated into one of these at the
edge where they happen; the HTTP layer turns them into the OpenAI error envelope
in exactly one place (``llmux.web.app``)::

    raise QueueTimeout(f"waited 30s for model 'llama'")
    # -> 504 {"error": {"message": ..., "type": "server_error",
    #                   "param": null, "code": "queue_timeout"}}
"""

from __future__ import annotations

UNTRUSTED_MAX = 128


def clip(value: object, limit: int = UNTRUSTED_MAX) -> str:
    """Shorten an untrusted value for an error message (JSON does the escaping)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class LlmuxError(Exception):
    """An error llmux answers itself, with an HTTP status and an OpenAI error code."""

    status = 500
    code = "internal_error"
    param: str | None = None

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def envelope(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class NotFound(LlmuxError):
    status, code = 404, "not_found"


class InvalidBody(LlmuxError):
    status, code = 400, "invalid_body"


class InvalidModel(LlmuxError):
    status, code, param = 400, "invalid_model", "model"


class UnsupportedMediaType(LlmuxError):
    status, code = 415, "unsupported_media_type"


class RequestTooLarge(LlmuxError):
    status, code = 413, "request_too_large"


class RequestBodyTimeout(LlmuxError):
    status, code = 408, "request_timeout"


class ModelNotFound(LlmuxError):
    status, code, param = 404, "model_not_found", "model"

    def __init__(self, model: object, *, removed: bool = False):
        why = "was removed from the config by a reload" if removed else "not found"
        super().__init__(f"model '{clip(model)}' {why}")


class Unauthorized(LlmuxError):
    status, code = 401, "unauthorized"


class Forbidden(LlmuxError):
    status, code = 403, "forbidden"


class InvalidConfig(LlmuxError):
    """A reload refused: the running config is unchanged; ``problems`` says why."""

    status, code = 400, "invalid_config"

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems

    def envelope(self) -> dict:
        answer = super().envelope()
        answer["error"]["problems"] = self.problems
        return answer


class Busy(LlmuxError):
    status, code = 409, "busy"


class QueueFull(LlmuxError):
    status, code, param = 429, "queue_full", "model"


class QueueTimeout(LlmuxError):
    status, code, param = 504, "queue_timeout", "model"


class SwitchTimeout(LlmuxError):
    status, code, param = 503, "switch_timeout", "model"


class ModelUnavailable(LlmuxError):
    status, code, param = 503, "model_unavailable", "model"


class ShuttingDown(LlmuxError):
    status, code = 503, "shutting_down"


class ClientGone(LlmuxError):
    """The client left before it was answered; nobody reads the response.

    nginx's 499 is the conventional status for the access log.
    """

    status, code = 499, "client_closed"


class BadGateway(LlmuxError):
    status, code = 502, "bad_gateway"


class GatewayTimeout(LlmuxError):
    status, code = 504, "gateway_timeout"


class BackendUnreachable(BadGateway):
    """No connection to the backend at all: maybe it is no longer running."""


class BackendRefused(LlmuxError):
    """The backend answered a waiting stream's request without a stream.

    ``status`` is the backend's (502 when it said 2xx or 3xx); ``envelope()``
    is the backend's own error object when it sent one, so the client's SDK
    reports what the backend said.
    """

    code = "upstream_error"

    def __init__(self, status: int, message: str, envelope: dict | None = None):
        super().__init__(message)
        self.status = status if status >= 400 else 502
        self._envelope = envelope

    def envelope(self) -> dict:
        return self._envelope if self._envelope is not None else super().envelope()
