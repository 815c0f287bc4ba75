"""What a gRPC caller is told of an error: the HTTP error's message under the gRPC
status that means the same (the README's list, held by tests/unit/test_grpc_status.py),
as one printable line."""

from __future__ import annotations

import re

import grpc

from mlapi.errors import MlapiError

# The gRPC status of each error code; by HTTP status for the rest.
STATUS_OF_CODE = {
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "not_ready": grpc.StatusCode.UNAVAILABLE,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "headers_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "insufficient_memory": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "model_load_failed": grpc.StatusCode.FAILED_PRECONDITION,
    "unsafe_model_file": grpc.StatusCode.FAILED_PRECONDITION,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_DETAILS = 2000


def status_of(error: MlapiError) -> grpc.StatusCode:
    code = STATUS_OF_CODE.get(error.code)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.INTERNAL


def escaped(text: str) -> str:
    """Error details as one printable line: a client's control characters, echoed
    in a message, would otherwise reach the caller's terminal and logs raw."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)[:MAX_DETAILS]


def abort_of(error: MlapiError) -> tuple[grpc.StatusCode, str]:
    """(status, details) to abort a call with."""
    return status_of(error), escaped(error.message)
