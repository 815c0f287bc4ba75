"""Keys alone (serving/keys.py and serving/access.py): the file's entries, the client
a key names, what it may call, the single-key settings as entries, and the file read
again when it changes. Every front calls these (tests/service/test_keys.py shows it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from mlapi.errors import BadRequest, ConfigError, Forbidden, RateLimited, Unauthorized
from mlapi.serving import keys
from mlapi.serving.access import Access, KeySettings
from mlapi.serving.keys import MISSING, SCHEME, Client, KeyRing, credentials

KEY = "k3y-\u00e9"  # a non-ASCII key, as text (UTF-8)
SENT = KEY.encode().decode("latin-1")  # what the server reads of it from an HTTP header
INVALID = "invalid API key"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _ring(**clients: str) -> KeyRing:
    return KeyRing({keys.digest_of(key): Client(name) for name, key in clients.items()})


@pytest.mark.parametrize(
    ("authorization", "api_key"),
    [(f"Bearer {SENT}", None), (None, SENT), (f"bearer {SENT}", None), (f"Bearer  {SENT} ", SENT)],
)
def test_the_right_key_in_either_header_names_its_client(
    authorization: str | None, api_key: str | None
) -> None:
    assert _ring(app=KEY, other="x").identify(authorization, api_key) == Client("app")
    assert _ring(app=KEY, other="x").identify("Bearer x", "x") == Client("other")


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
        (None, "\udcff", INVALID),
        ("Bearer x", SENT, "the Authorization and X-API-Key headers hold different keys"),
        (f"Bearer {SENT}", "x", "the Authorization and X-API-Key headers hold different keys"),
    ],
)
def test_a_wrong_or_missing_key_is_refused_and_never_echoed(
    authorization: str | None, api_key: str | None, message: str
) -> None:
    with pytest.raises(Unauthorized) as refused:
        _ring(app=KEY, other="x").identify(authorization, api_key)
    assert refused.value.message == message


def test_a_key_beyond_latin1_matches_as_grpc_metadata_gives_it() -> None:
    key = "\u043a\u043b\u044e\u0447-\U0001f511"
    assert _ring(app=key).identify(None, key).name == "app"
    with pytest.raises(Unauthorized):
        _ring(app=key).identify(f"Bearer {key[:-1]}", None)


def test_headers_are_read_once_each() -> None:
    assert credentials([(b"authorization", b"Bearer a"), (b"x-api-key", b"b")]) == ("Bearer a", "b")
    assert credentials([(b"host", b"x")]) == (None, None)
    for name in (b"authorization", b"x-api-key"):
        with pytest.raises(BadRequest) as refused:
            credentials([(name, b"a"), (name, b"a")])
        assert refused.value.message == "more than one Authorization or X-API-Key header"


def test_a_client_may_call_the_models_its_globs_cover() -> None:
    client = Client("c", ("iris", "text-*", "v?"))
    assert [m for m in ("iris", "iris2", "text-en", "text", "v1", "v10") if client.may_call(m)] == [
        "iris",
        "text-en",
        "v1",
    ]
    assert Client("all").may_call("anything") and not Client("none", ()).may_call("iris")
    with pytest.raises(Forbidden) as refused:
        Access.check_model(client, "secret-" + "m" * 80)
    assert refused.value.message == f"key 'c' may not call model 'secret-{'m' * 57}...'"


ENTRY: dict[str, Any] = {"name": "app", "sha256": _sha("s3cret")}


def test_the_file_s_entries_with_their_defaults() -> None:
    entries = [
        ENTRY,
        {
            "name": "batch.jobs-2",
            "sha256": _sha("other"),
            "models": ["iris", "text-*"],
            "admin": True,
            "rate": 2.5,
        },
        {"name": "fast", "sha256": _sha("third"), "rate": 20, "burst": 5},
    ]
    clients = keys.parse_entries(entries)
    assert clients == {
        keys.digest_of("s3cret"): Client("app"),
        keys.digest_of("other"): Client("batch.jobs-2", ("iris", "text-*"), True, 2.5, 3),
        keys.digest_of("third"): Client("fast", ("*",), False, 20.0, 5),
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**ENTRY, "key": "plain"}, "API_KEYS_FILE key[0]: unknown field(s) ['key']"),
        ({**ENTRY, "name": ""}, "API_KEYS_FILE key[0]: 'name' must be 1 to 64 letters"),
        ({**ENTRY, "name": "-x"}, "API_KEYS_FILE key[0]: 'name' must be 1 to 64 letters"),
        ({**ENTRY, "name": "a" * 65}, "API_KEYS_FILE key[0]: 'name' must be 1 to 64 letters"),
        ({**ENTRY, "name": "a b"}, "API_KEYS_FILE key[0]: 'name' must be 1 to 64 letters"),
        ({**ENTRY, "sha256": "ABC"}, "API_KEYS_FILE key 'app': 'sha256' must be 64 lower-case hex"),
        ({**ENTRY, "sha256": _sha("x").upper()}, "'sha256' must be 64 lower-case hex digits"),
        ({"name": "app"}, "API_KEYS_FILE key 'app': 'sha256' must be 64 lower-case hex digits"),
        ({**ENTRY, "models": "iris"}, "'models' must be a list of model names or globs"),
        ({**ENTRY, "models": [""]}, "'models' must be a list of model names or globs"),
        ({**ENTRY, "admin": "yes"}, "API_KEYS_FILE key 'app': 'admin' must be true or false"),
        ({**ENTRY, "rate": 0}, "'rate' must be a number of requests a second over 0"),
        ({**ENTRY, "rate": float("inf")}, "'rate' must be a number of requests a second over 0"),
        ({**ENTRY, "rate": True}, "'rate' must be a number of requests a second over 0"),
        ({**ENTRY, "rate": 1e7}, "'rate' must be a number of requests a second over 0"),
        ({**ENTRY, "rate": 1, "burst": 0}, "'burst' must be a whole number of requests, 1 or more"),
        ({**ENTRY, "rate": 1, "burst": 2.5}, "'burst' must be a whole number of requests"),
        ({**ENTRY, "burst": 3}, "API_KEYS_FILE key 'app': 'burst' needs a 'rate'"),
    ],
)
def test_each_bad_entry_is_named(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        keys.parse_entries([entry])
    assert message in str(refused.value)


def test_names_and_keys_are_each_used_once() -> None:
    with pytest.raises(ConfigError, match="key 'app': the name is used twice"):
        keys.parse_entries([ENTRY, {**ENTRY, "sha256": _sha("b")}])
    with pytest.raises(ConfigError, match="key 'b': the same key as 'app'"):
        keys.parse_entries([ENTRY, {**ENTRY, "name": "b"}])
    with pytest.raises(ConfigError, match="holds 10,001 keys, more than 10,000"):
        keys.parse_entries([ENTRY] * 10_001)


def test_the_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    with pytest.raises(ConfigError, match=r"keys\.toml does not exist"):
        keys.read_file(path)
    path.write_text("")
    assert keys.read_file(path) == []
    path.write_text(f'[[key]]\nname = "app"\nsha256 = "{_sha("s")}"\n')
    assert keys.read_file(path) == [{"name": "app", "sha256": _sha("s")}]
    for text, message in [
        ("[[key]\n", "is not valid TOML"),
        ("keys = 1\n", "unknown key(s) ['keys'] (entries are [[key]])"),
        ('key = "x"\n', "'key' must be an array of tables ([[key]])"),
        ("key = [1]\n", "'key' must be an array of tables ([[key]])"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as refused:
            keys.read_file(path)
        assert message in str(refused.value)


def test_the_single_key_settings_are_entries_too() -> None:
    api, admin = SecretStr("api-key"), SecretStr("admin-key")
    assert keys.ring_of(None, None, None) is None  # no key anywhere: an open server
    ring = keys.ring_of(None, api, None)
    assert ring is not None and ring.identify(None, "api-key") == Client("default", admin=True)
    ring = keys.ring_of(None, api, admin)
    assert ring is not None
    assert ring.identify(None, "api-key") == Client("default")  # not admin any more
    assert ring.identify(None, "admin-key") == Client("admin", admin=True)
    same = keys.ring_of(None, api, SecretStr("api-key"))  # one key for both: admin too
    assert same is not None and same.identify(None, "api-key") == Client("default", admin=True)
    empty = keys.ring_of({}, None, None)
    assert empty is not None and empty.clients == ()  # a file of no key opens nothing
    with pytest.raises(Unauthorized):
        empty.identify(None, "anything")
    with pytest.raises(ConfigError, match="API_KEYS_FILE names a key 'default'"):
        keys.ring_of({keys.digest_of("x"): Client("default")}, api, None)
    with pytest.raises(ConfigError, match="the default key is also in API_KEYS_FILE as 'app'"):
        keys.ring_of({keys.digest_of("api-key"): Client("app")}, api, None)


def _access(tmp_path: Path, text: str, api_key: str | None = None) -> tuple[Access, Path]:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    secret = SecretStr(api_key) if api_key else None
    return Access(KeySettings(path, secret, None)), path


def _entry(name: str, key: str, extra: str = "") -> str:
    return f'[[key]]\nname = "{name}"\nsha256 = "{_sha(key)}"\n{extra}\n'


def test_access_names_clients_and_holds_admin_routes_to_admin_keys(tmp_path: Path) -> None:
    access, _ = _access(tmp_path, _entry("app", "a") + _entry("ops", "o", "admin = true"))
    assert access.keyed and [c.name for c in access.clients] == ["app", "ops"]
    assert access.identify(None, "a").name == "app"
    assert access.identify(None, "o", admin=True).name == "ops"
    with pytest.raises(Forbidden) as refused:
        access.identify(None, "a", admin=True)
    assert refused.value.message == "key 'app' may not use the repository routes"
    with pytest.raises(BadRequest):
        access.identify(None, "a", repeated=True)
    open_server = Access(KeySettings())
    assert not open_server.keyed and open_server.identify(None, None).name == "anonymous"
    admin_only = Access(KeySettings(None, None, SecretStr("adm")))
    assert admin_only.identify(None, None).name == "anonymous"  # inference stays open
    with pytest.raises(Unauthorized):
        admin_only.identify(None, None, admin=True)


def test_a_rate_over_its_burst_is_refused_with_when_to_retry(tmp_path: Path) -> None:
    access, _ = _access(tmp_path, _entry("slow", "s", "rate = 0.5\nburst = 2"))
    access.admit(None, "s")
    access.admit(None, "s")
    assert access.identify(None, "s").name == "slow"  # who it is, without a token
    with pytest.raises(RateLimited) as refused:
        access.admit(None, "s")
    assert refused.value.retry_after_s == 2 and refused.value.status == 429
    assert refused.value.message.startswith(
        "key 'slow' is over its rate of 0.5 requests a second (burst 2); retry in "
    )


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_keys_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access, path = _access(tmp_path, _entry("app", "a") + _entry("old", "o"))
    assert access.refresh() is False  # unchanged
    path.write_text(_entry("app", "a") + _entry("new", "n"))
    assert access.refresh() is True
    assert access.identify(None, "n").name == "new"
    with pytest.raises(Unauthorized):
        access.identify(None, "o")  # revoked
    for broken in ("[[key]\n", _entry("app", "a") + _entry("app", "b"), None):
        if broken is None:
            path.unlink()
        else:
            path.write_text(broken)
        with caplog.at_level("ERROR", logger="mlapi.keys"):
            assert access.refresh() is False
        assert access.identify(None, "n").name == "new"
    assert len(caplog.records) == 3 and all(
        r.getMessage().startswith("keys file refused, the keys in force stay: ")
        for r in caplog.records
    )
    path.write_text("")
    assert access.refresh() is True  # every key revoked: nobody gets in
    with pytest.raises(Unauthorized):
        access.identify(None, "n")


def test_a_wrong_key_costs_the_same_whether_or_not_it_shares_a_prefix_with_a_key() -> None:
    """Statistical and bounded: wrong keys that share all but the last character of
    a real key, and wrong keys that share nothing, alternate in batches; the median
    batch times differ by far less than a byte-by-byte comparison would make them
    (the key is hashed before anything is compared)."""
    import statistics
    import time

    real = "mlapi_" + "s" * 43
    ring = _ring(app=real, **{f"other{i}": f"mlapi_{i:043d}" for i in range(50)})
    near = [real[:-1] + c for c in "abcdefgh"]  # 48 of 49 characters in common
    far = ["#" + c * (len(real) - 1) for c in "qrstuvwx"]  # nothing in common

    def batch(presented: list[str]) -> float:
        started = time.perf_counter_ns()
        for _ in range(25):
            for key in presented:
                with pytest.raises(Unauthorized):
                    ring.identify(None, key)
        return float(time.perf_counter_ns() - started)

    near_times, far_times = [], []
    for _ in range(60):
        near_times.append(batch(near))
        far_times.append(batch(far))
    ratio = statistics.median(near_times) / statistics.median(far_times)
    assert 0.8 < ratio < 1.25, ratio


def test_the_single_key_and_the_file_together_and_both_headers_through_access(
    tmp_path: Path,
) -> None:
    access, _ = _access(tmp_path, _entry("app", "a"), api_key="api")
    assert access.identify("Bearer api", None).name == "default"
    assert access.admit("Bearer a", None).name == "app"
    with pytest.raises(BadRequest):
        access.admit(None, "a", repeated=True)
    with pytest.raises(Forbidden, match="key 'app' may not use the repository routes"):
        access.admit("Bearer a", None, admin=True)
    assert access.admit(None, "api", admin=True).name == "default"  # no admin key: admin


def test_each_change_is_read_once_and_a_file_moving_while_read_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    access, path = _access(tmp_path, _entry("app", "a"))
    path.write_text(_entry("app", "a") + _entry("b", "b"))
    with caplog.at_level("INFO", logger="mlapi.keys"):
        assert access.refresh() is True
        assert access.refresh() is False  # read once
    assert [r.getMessage() for r in caplog.records] == ["keys file read: 2 keys"]
    caplog.clear()
    path.write_text("[[key]\n")
    with caplog.at_level("INFO", logger="mlapi.keys"):
        assert access.refresh() is False
        assert access.refresh() is False  # refused once, said once
    assert len(caplog.records) == 1
    path.write_text(_entry("app", "a"))
    real = KeySettings.load

    def written_meanwhile(settings: KeySettings) -> Any:
        ring = real(settings)
        path.write_text(_entry("app", "a") + _entry("c", "c"))  # the writer goes on
        return ring

    monkeypatch.setattr(KeySettings, "load", written_meanwhile)
    assert access.refresh() is False  # what it read may be half a file: not taken
    assert access.identify(None, "b").name == "b"
    monkeypatch.setattr(KeySettings, "load", real)
    assert access.refresh() is True and access.identify(None, "c").name == "c"
