"""API keys, one per client: who a request comes from, which models it may call, how
fast, and whether it may use the repository (admin) routes.

The keys file (``API_KEYS_FILE``, TOML, written by ``mlapi keys add``) holds, per
client, the SHA-256 digest of its key, never the key:

    [[key]]
    name = "search-app"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    models = ["iris", "text-*"]     # names or globs; absent: every model
    admin = false                   # the repository routes
    rate = 20.0                     # requests a second; absent: no limit
    burst = 5                       # requests at once above the rate; default: the rate

Why SHA-256 and not a slow hash: the keys are 32 random bytes from ``mlapi keys add``
(256 bits), so no guessing can reach one whatever the hash costs, while a slow hash
(bcrypt, scrypt) would cost tens of milliseconds on every request. A slow hash
protects a person's chosen password; these are not chosen.

A presented key is hashed, then looked up by its digest: the time a wrong key takes
depends on its length only, never on how much of it matches a key in the file (there
is nothing to compare it with but digests). ``API_KEY`` and ``MLAPI_ADMIN_KEY`` keep
working: each is one more entry, ``default`` (every model; admin too when no admin
key is set) and ``admin`` (every model, and the repository routes)."""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from mlapi.errors import BadRequest, ConfigError, Unauthorized
from mlapi.repository import files

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_KEYS = 10_000
MAX_RATE = 1e6
MAX_FILE_BYTES = 4 << 20
_ENTRY_KEYS = {"name", "sha256", "models", "admin", "rate", "burst"}
MISSING = "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
SCHEME = "unsupported Authorization scheme: use 'Bearer <key>'"
INVALID = "invalid API key"


@dataclass(frozen=True, slots=True)
class Client:
    """Who a request comes from, as its key says."""

    name: str
    models: tuple[str, ...] = ("*",)  # globs
    admin: bool = False
    rate: float | None = None  # requests a second; None: no limit
    burst: int = 1

    def may_call(self, model: str) -> bool:
        models = self.models
        if "*" in models:  # every model: the common case, with no pattern matched
            return True
        return any(fnmatchcase(model, pattern) for pattern in models)


# Every request when no key is configured at all: the server is open (and answers
# only the hosts MLAPI_ALLOWED_HOSTS names).
ANONYMOUS = Client("anonymous", ("*",), admin=True)


def digest_of(key: str) -> bytes:
    """The SHA-256 of a key as configured: its text in UTF-8 (what a client sends)."""
    return hashlib.sha256(key.encode()).digest()


def raw(presented: str) -> bytes:
    """The bytes the client sent: HTTP header values are decoded as latin-1, so a key
    of non-ASCII characters (sent as UTF-8) comes back byte for byte that way."""
    try:
        return presented.encode("latin-1")  # pragma: no mutate (codec names ignore case)
    except UnicodeEncodeError:  # gRPC metadata: text decoded from UTF-8
        return presented.encode(errors="surrogateescape")


class KeyRing:
    """Every client's digest, looked up by a presented key's digest."""

    def __init__(self, clients: dict[bytes, Client]) -> None:
        self._by_digest = dict(clients)
        self.clients = tuple(sorted(set(clients.values()), key=lambda c: c.name))

    def __repr__(self) -> str:
        return f"KeyRing({len(self._by_digest)} keys)"

    def identify(self, authorization: str | None, api_key: str | None) -> Client:
        """The client the credentials name. Every credential presented must be a key
        (a good X-API-Key does not excuse a wrong Authorization header), both must
        name the same client, and at least one must be presented."""
        if authorization is None and api_key is None:
            raise Unauthorized(MISSING)
        found: Client | None = None
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized(SCHEME)
            found = self._lookup(token.strip())
        if api_key is not None:
            other = self._lookup(api_key)
            if found is not None and other is not found:
                raise Unauthorized("the Authorization and X-API-Key headers hold different keys")
            found = other
        assert found is not None
        return found

    def _lookup(self, presented: str) -> Client:
        client = self._by_digest.get(hashlib.sha256(raw(presented)).digest())
        if client is None:
            raise Unauthorized(INVALID)
        return client


def duplicate_credentials() -> BadRequest:
    return BadRequest("more than one Authorization or X-API-Key header")


def credentials(headers: Any) -> tuple[str | None, str | None]:
    """(Authorization, X-API-Key) among (lower-case) headers; BadRequest when either
    comes more than once, so every route reads the same one."""
    authorization = api_key = None
    for key, value in headers:
        if key == b"authorization":
            if authorization is not None:
                raise duplicate_credentials()
            authorization = value.decode("latin-1")  # pragma: no mutate (as above)
        elif key == b"x-api-key":
            if api_key is not None:
                raise duplicate_credentials()
            api_key = value.decode("latin-1")  # pragma: no mutate (as above)
    return authorization, api_key


# ----- the keys file ---------------------------------------------------------------
def read_file(path: Path) -> list[dict[str, Any]]:
    """The file's entries as written (ConfigError naming what is wrong)."""
    try:
        document = tomllib.loads(files.read_capped(path, MAX_FILE_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"API_KEYS_FILE {path} does not exist") from None
    except files.NotReadable as exc:
        raise ConfigError(f"API_KEYS_FILE {path} {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"API_KEYS_FILE {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"API_KEYS_FILE {path} cannot be read ({exc.strerror})") from None
    unknown = set(document) - {"key"}
    if unknown:
        raise ConfigError(f"API_KEYS_FILE: unknown key(s) {sorted(unknown)} (entries are [[key]])")
    entries = document.get("key", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("API_KEYS_FILE: 'key' must be an array of tables ([[key]])")
    return entries


def parse_entries(entries: list[dict[str, Any]]) -> dict[bytes, Client]:
    """Every entry checked: a name and a digest each, unique, and what it may do."""
    if len(entries) > MAX_KEYS:
        raise ConfigError(f"API_KEYS_FILE holds {len(entries):,} keys, more than {MAX_KEYS:,}")
    clients: dict[bytes, Client] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"API_KEYS_FILE key[{index}]"
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: 'name' must be 1 to 64 letters, digits, '_', '.', '-' "
                "(starting with a letter or digit)"
            )
        where = f"API_KEYS_FILE key '{name}'"
        if name in names:
            raise ConfigError(f"{where}: the name is used twice")
        names.add(name)
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ConfigError(f"{where}: 'sha256' must be 64 lower-case hex digits")
        if bytes.fromhex(digest) in clients:
            raise ConfigError(f"{where}: the same key as '{clients[bytes.fromhex(digest)].name}'")
        clients[bytes.fromhex(digest)] = client_of(where, name, entry)
    return clients


def client_of(where: str, name: str, entry: dict[str, Any]) -> Client:
    models = entry.get("models", ["*"])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{where}: 'models' must be a list of model names or globs")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"{where}: 'admin' must be true or false")
    rate = entry.get("rate")
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or not 0 < rate <= MAX_RATE
    ):
        raise ConfigError(f"{where}: 'rate' must be a number of requests a second over 0")
    default_burst = max(1, math.ceil(rate)) if rate is not None else 1
    burst = entry.get("burst", default_burst)
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_RATE:
        raise ConfigError(f"{where}: 'burst' must be a whole number of requests, 1 or more")
    if rate is None and "burst" in entry:
        raise ConfigError(f"{where}: 'burst' needs a 'rate'")
    return Client(name, tuple(models), admin, None if rate is None else float(rate), burst)


def ring_of(
    entries: dict[bytes, Client] | None, api_key: SecretStr | None, admin_key: SecretStr | None
) -> KeyRing | None:
    """The file's clients (None: no file) and the single-key settings' keys as
    entries; None when no key is configured at all (an open server). A file with no
    entry is a server no key opens, never an open one."""
    clients = dict(entries or {})
    taken = {client.name for client in clients.values()}
    shorthand = []
    if api_key is not None:
        shorthand.append(("default", api_key, Client("default", ("*",), admin_key is None)))
    if admin_key is not None:
        shorthand.append(("admin", admin_key, Client("admin", ("*",), True)))
    for name, key, client in shorthand:
        if name in taken:
            raise ConfigError(
                f"API_KEYS_FILE names a key '{name}', the name of the "
                f"{'API_KEY' if name == 'default' else 'MLAPI_ADMIN_KEY'} setting's key"
            )
        digest = digest_of(key.get_secret_value())
        existing = clients.get(digest)
        if existing is None:
            clients[digest] = client
        elif name == "admin" and existing.name == "default":  # one key for both settings
            clients[digest] = replace(existing, admin=True)
        else:
            raise ConfigError(f"the {name} key is also in API_KEYS_FILE as '{existing.name}'")
    return KeyRing(clients) if clients or entries is not None else None
