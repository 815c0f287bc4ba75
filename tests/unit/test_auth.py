"""The API key check alone (serving/auth.py), as every front calls it: every
credential presented must be right, one at least must be presented, each at most
once, compared in constant time and never echoed."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from mlapi.errors import BadRequest, Unauthorized
from mlapi.serving.auth import Authenticator, credentials

KEY = "k3y-\u00e9"  # a non-ASCII key, configured as text (UTF-8)
SENT = KEY.encode().decode("latin-1")  # what the server reads of it from an HTTP header
MISSING = "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
SCHEME = "unsupported Authorization scheme: use 'Bearer <key>'"
INVALID = "invalid API key"


def _auth(key: str = KEY) -> Authenticator:
    """Built in each test (not at import), so that a broken constructor fails them."""
    return Authenticator(SecretStr(key))


@pytest.mark.parametrize(
    ("authorization", "api_key"),
    [(f"Bearer {SENT}", None), (None, SENT), (f"bearer {SENT}", None), (f"Bearer  {SENT} ", SENT)],
)
def test_the_right_key_in_either_header_passes(
    authorization: str | None, api_key: str | None
) -> None:
    _auth().check_values(authorization, api_key)


@pytest.mark.parametrize(
    ("authorization", "api_key", "message"),
    [
        (None, None, MISSING),
        ("Basic dXNlcjpwYXNz", None, SCHEME),
        ("Bearer wrong", None, INVALID),
        (None, "wrong", INVALID),
        (f"Bearer {SENT}", "wrong", INVALID),  # a right one does not excuse the other
        ("Bearer wrong", SENT, INVALID),
        (f"Bearer {SENT}x", None, INVALID),
        ("Bearer", None, INVALID),
        (SENT, None, SCHEME),
        (None, "\udcff", INVALID),  # a lone surrogate is a wrong key, not a crash
    ],
)
def test_a_wrong_or_missing_key_is_refused(
    authorization: str | None, api_key: str | None, message: str
) -> None:
    with pytest.raises(Unauthorized) as refused:
        _auth().check_values(authorization, api_key)
    assert refused.value.message == message
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
        with pytest.raises(BadRequest) as refused:
            credentials([(name, b"a"), (name, b"a")])
        assert refused.value.message == "more than one Authorization or X-API-Key header"
    auth = _auth()
    auth.check([(b"x-api-key", KEY.encode())])
    auth.check([(b"authorization", b"Bearer " + KEY.encode())])
    with pytest.raises(Unauthorized):
        auth.check([(b"x-api-key", b"nope")])


def test_a_key_beyond_latin1_matches_as_grpc_metadata_gives_it() -> None:
    """gRPC gives metadata values as text decoded from UTF-8, not latin-1."""
    key = "\u043a\u043b\u044e\u0447-\U0001f511"
    _auth(key).check_values(None, key)
    _auth(key).check_values(f"Bearer {key}", None)
    with pytest.raises(Unauthorized):
        _auth(key).check_values(None, key[:-1])


def test_the_key_never_shows_in_its_repr() -> None:
    assert repr(_auth()) == "Authenticator(key=**********)"
