"""The API key check alone (serving/auth.py), as every front calls it: every
credential presented must be right, one at least must be presented, each at most
once, compared in constant time and never echoed."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from mlapi.errors import BadRequest, Unauthorized
from mlapi.serving.auth import Authenticator, credentials

KEY = "k3y-\u00e9"  # a non-ASCII key, configured as text (UTF-8)
AUTH = Authenticator(SecretStr(KEY))
SENT = KEY.encode().decode("latin-1")  # what the server reads of it from an HTTP header


@pytest.mark.parametrize(
    ("authorization", "api_key"),
    [(f"Bearer {SENT}", None), (None, SENT), (f"bearer {SENT}", None), (f"Bearer  {SENT} ", SENT)],
)
def test_the_right_key_in_either_header_passes(
    authorization: str | None, api_key: str | None
) -> None:
    AUTH.check_values(authorization, api_key)


@pytest.mark.parametrize(
    ("authorization", "api_key", "message"),
    [
        (None, None, "missing API key"),
        ("Basic dXNlcjpwYXNz", None, "unsupported Authorization scheme"),
        ("Bearer wrong", None, "invalid API key"),
        (None, "wrong", "invalid API key"),
        (f"Bearer {SENT}", "wrong", "invalid API key"),  # a right one does not excuse the other
        ("Bearer wrong", SENT, "invalid API key"),
        (f"Bearer {SENT}x", None, "invalid API key"),
        ("Bearer", None, "invalid API key"),
        (SENT, None, "unsupported Authorization scheme"),
    ],
)
def test_a_wrong_or_missing_key_is_refused(
    authorization: str | None, api_key: str | None, message: str
) -> None:
    with pytest.raises(Unauthorized) as refused:
        AUTH.check_values(authorization, api_key)
    assert message in refused.value.message
    assert SENT not in refused.value.message and "wrong" not in refused.value.message


def test_headers_are_read_once_each_and_a_second_is_refused() -> None:
    """A UTF-8 key in a header is compared byte for byte (it was read as latin-1 and
    compared as UTF-8 of that: a non-ASCII key could never match)."""
    assert credentials([(b"authorization", b"Bearer a"), (b"x-api-key", b"b")]) == (
        "Bearer a",
        "b",
    )
    assert credentials([(b"host", b"x")]) == (None, None)
    for name in (b"authorization", b"x-api-key"):
        with pytest.raises(BadRequest, match="more than one"):
            credentials([(name, b"a"), (name, b"a")])
    AUTH.check([(b"x-api-key", KEY.encode())])
    with pytest.raises(Unauthorized):
        AUTH.check([(b"x-api-key", b"nope")])


def test_the_key_never_shows_in_its_repr() -> None:
    assert KEY not in repr(AUTH) and "**********" in repr(AUTH)
