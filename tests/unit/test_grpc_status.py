"""The gRPC status of each error (rpc/status.py), as the README's gRPC section lists
it: every error class ml-api raises is in this table, so a new one must be placed."""

from __future__ import annotations

import inspect

import pytest
from grpc import StatusCode as Code

from mlapi import errors
from mlapi.errors import MlapiError
from mlapi.rpc.status import MAX_DETAILS, abort_of, escaped, status_of

# README: "INVALID_ARGUMENT (400 ...), UNAUTHENTICATED (401), PERMISSION_DENIED (403),
# NOT_FOUND (404), RESOURCE_EXHAUSTED (413 ...; 507 on load), UNAVAILABLE (503: not
# ready), RESOURCE_EXHAUSTED (503: overloaded; 429: over a key's rate),
# DEADLINE_EXCEEDED (504; 408), FAILED_PRECONDITION (a load that failed), INTERNAL (an
# unexpected error ...)"
EXPECTED: dict[str, tuple[MlapiError, Code]] = {
    "BadRequest": (errors.BadRequest("bad"), Code.INVALID_ARGUMENT),
    "Unauthorized": (errors.Unauthorized("who"), Code.UNAUTHENTICATED),
    "Forbidden": (errors.Forbidden("off"), Code.PERMISSION_DENIED),
    "NotFound": (errors.NotFound("none"), Code.NOT_FOUND),
    "MethodNotAllowed": (errors.MethodNotAllowed("no"), Code.INVALID_ARGUMENT),
    "PayloadTooLarge": (errors.PayloadTooLarge("big"), Code.RESOURCE_EXHAUSTED),
    "HeadersTooLarge": (errors.HeadersTooLarge(8192), Code.RESOURCE_EXHAUSTED),
    "BodyTimeout": (errors.BodyTimeout("slow"), Code.DEADLINE_EXCEEDED),
    "UnsupportedMediaType": (errors.UnsupportedMediaType("xml"), Code.INVALID_ARGUMENT),
    "NotReady": (errors.NotReady("loading"), Code.UNAVAILABLE),
    "Overloaded": (errors.Overloaded("full"), Code.RESOURCE_EXHAUSTED),
    "RateLimited": (errors.RateLimited("too fast"), Code.RESOURCE_EXHAUSTED),
    "GatewayTimeout": (errors.GatewayTimeout("late"), Code.DEADLINE_EXCEEDED),
    "ClientGone": (errors.ClientGone(), Code.CANCELLED),
    "InternalError": (errors.InternalError("abc"), Code.INTERNAL),
    "ModelLoadError": (errors.ModelLoadError("broken"), Code.FAILED_PRECONDITION),
    "InsufficientMemory": (errors.InsufficientMemory("no room"), Code.RESOURCE_EXHAUSTED),
    "UnsafeModelFile": (errors.UnsafeModelFile("pickle"), Code.FAILED_PRECONDITION),
    "MlapiError": (MlapiError("what"), Code.INTERNAL),
}


def test_every_error_class_has_its_place_in_the_table() -> None:
    raised = {
        name
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, MlapiError)
    }
    assert raised == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_error_maps_to_the_status_that_means_the_same(name: str) -> None:
    error, code = EXPECTED[name]
    assert status_of(error) == code
    assert abort_of(error) == (code, error.message)


def test_a_client_gone_for_its_body_s_time_is_a_deadline_not_a_cancel() -> None:
    assert status_of(errors.ClientGone(timed_out=True)) == Code.DEADLINE_EXCEEDED


def test_an_error_of_another_code_maps_by_its_http_status() -> None:
    class Teapot(MlapiError):
        status, code = 418, "teapot"

    class Broken(MlapiError):
        status, code = 502, "upstream"

    assert status_of(Teapot("short and stout")) == Code.INVALID_ARGUMENT
    assert status_of(Broken("no")) == Code.INTERNAL
    assert status_of(type("Edge", (MlapiError,), {"status": 499, "code": "x"})("")) == (
        Code.INVALID_ARGUMENT
    )
    assert status_of(type("Edge", (MlapiError,), {"status": 500, "code": "x"})("")) == (
        Code.INTERNAL
    )


def test_details_are_one_printable_line_of_bounded_length() -> None:
    assert escaped("a\tb\x7f\x1b[31m\nz") == "a\\x09b\\x7f\\x1b[31m\\x0az"
    assert escaped("plain é ✓") == "plain é ✓"
    assert escaped("x" * 5000) == "x" * MAX_DETAILS
    assert abort_of(errors.BadRequest("in\nput"))[1] == "in\\x0aput"
