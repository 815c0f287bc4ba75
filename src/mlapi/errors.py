"""One error hierarchy: every error the server raises on purpose carries an HTTP
status and a stable machine-readable code, and renders as the protocol's
``{"error": "..."}`` body."""

from __future__ import annotations

import re
from pathlib import Path

# An absolute path in a message: a '/' that starts a word, then path characters.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`:,;()\[\]<>/]+/)*([^\s'\"`:,;()\[\]<>/]+)")


class MlapiError(Exception):
    """Base of every deliberate error. ``message`` is safe to show a client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(MlapiError):
    status = 400
    code = "bad_request"


class Unauthorized(MlapiError):
    status = 401
    code = "unauthorized"


class Forbidden(MlapiError):
    status = 403
    code = "forbidden"


class NotFound(MlapiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(MlapiError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(MlapiError):
    status = 413
    code = "payload_too_large"


class HeadersTooLarge(MlapiError):
    status = 431
    code = "headers_too_large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request headers are over {max_bytes} bytes (MLAPI_MAX_HEADER_BYTES)")


class BodyTimeout(MlapiError):
    """A request's body (a gRPC call's message) did not arrive in time."""

    status = 408
    code = "timeout"


class UnsupportedMediaType(MlapiError):
    status = 415
    code = "unsupported_media_type"


class NotReady(MlapiError):
    status = 503
    code = "not_ready"


class Overloaded(MlapiError):
    """The model's queue is full: shed load fast, the client retries."""

    status = 503
    code = "overloaded"
    retry_after_s = 1


class RateLimited(MlapiError):
    """A client over the rate its key allows (API_KEYS_FILE); ``Retry-After`` says
    when a request would go."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GatewayTimeout(MlapiError):
    """The request did not finish within MLAPI_REQUEST_TIMEOUT_S. ``queued``: it never
    started (it waited behind others), so its model is not to blame for it."""

    status = 504
    code = "timeout"

    def __init__(self, message: str, queued: bool = False) -> None:
        super().__init__(message)
        self.queued = queued


class ClientGone(MlapiError):
    """The client went away before its answer was ready (or its body ran out of time,
    and the connection has answered 408 itself): nobody is left to answer. Counted,
    never rendered."""

    status = 499
    code = "cancelled"

    def __init__(self, timed_out: bool = False) -> None:
        super().__init__("the client went away")
        if timed_out:  # its body ran out of time: the connection answered 408
            self.status, self.code = 408, "timeout"


class InternalError(MlapiError):
    """Something the server did not expect: the client is told only the request id
    that the log line, with the traceback, carries."""

    status = 500
    code = "internal_error"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal server error (request id {request_id})")
        self.request_id = request_id


class ModelLoadError(MlapiError):
    """A model could not be loaded. The message is shown in readiness bodies and
    must not contain host paths or secrets (the caller names files relative to
    the model's version folder)."""

    status = 400
    code = "model_load_failed"


class InsufficientMemory(ModelLoadError):
    """A model version would not fit in what is left of the memory limit."""

    status = 507
    code = "insufficient_memory"


class UnsafeModelFile(ModelLoadError):
    """A file would be deserialised with pickle, which can run arbitrary code."""

    code = "unsafe_model_file"


class ConfigError(Exception):
    """A setting or a model config is invalid. Rendered as one line, exit code 2."""


def without_host_paths(message: str, folder: Path) -> str:
    """``message`` as shown on open routes: paths inside ``folder`` (a model's version
    folder) relative to it, any other absolute path cut to '.../<file name>'."""
    for prefix in {str(folder), str(folder.resolve())}:
        message = message.replace(prefix + "/", "").replace(prefix, ".")
    return _ABSOLUTE_PATH.sub(lambda match: ".../" + match.group(1), message)
