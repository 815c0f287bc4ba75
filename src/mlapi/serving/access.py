"""Who may do what, as every front asks it: the key a call carries names its client
(serving/keys.py); the client may call some models, may or may not use the
repository routes, and is held to its rate (serving/rates.py).

Inference and model routes need a key when ``API_KEY`` or ``API_KEYS_FILE`` is set;
the repository routes when any key is (``MLAPI_ADMIN_KEY`` too). With none, every
call is the ``anonymous`` client, with every right and no rate (the server then
answers only the hosts MLAPI_ALLOWED_HOSTS names).

The keys file is looked at again every ``MLAPI_KEYS_POLL_S`` seconds by each
worker: a key added or removed there counts from the next look, with no restart.
A file that no longer reads as keys (or is gone) is refused with a log line, and
the keys already in force stay; a file of no key lets no one in. Never an open
server."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from mlapi.errors import ConfigError, Forbidden
from mlapi.serving import keys
from mlapi.serving.keys import ANONYMOUS, Client, KeyRing, duplicate_credentials
from mlapi.serving.limits import shown
from mlapi.serving.rates import Buckets

log = logging.getLogger("mlapi.keys")


@dataclass(frozen=True)
class KeySettings:
    """Where the keys come from (the settings that name them)."""

    file: Path | None = None
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None

    @property
    def inference_keyed(self) -> bool:
        return self.file is not None or self.api_key is not None

    def load(self) -> KeyRing | None:
        entries = keys.parse_entries(keys.read_file(self.file)) if self.file else None
        return keys.ring_of(entries, self.api_key, self.admin_key)


class Access:
    def __init__(self, source: KeySettings, buckets: Buckets | None = None) -> None:
        self.source = source
        self.ring = source.load()  # ConfigError at start: a bad file stops the start
        self.buckets = buckets or Buckets()
        self._seen = _signature(source.file)

    @property
    def keyed(self) -> bool:
        """Whether inference and model routes need a key."""
        return self.source.inference_keyed

    @property
    def clients(self) -> tuple[Client, ...]:
        return self.ring.clients if self.ring is not None else ()

    def identify(
        self,
        authorization: str | None,
        api_key: str | None,
        repeated: bool = False,
        admin: bool = False,
    ) -> Client:
        """The client a call's credentials name: Unauthorized (no key or a wrong one),
        Forbidden (an admin route without an admin key); a credential given twice is
        a BadRequest."""
        if repeated:
            raise duplicate_credentials()
        ring = self.ring
        if ring is None or not (admin or self.keyed):
            return ANONYMOUS
        client = ring.identify(authorization, api_key)
        if admin and not client.admin:
            raise Forbidden(f"key '{client.name}' may not use the repository routes")
        return client

    def limit(self, client: Client) -> None:
        """RateLimited when the client is over its rate (a token taken if not)."""
        if client.rate is not None:
            self.buckets.check(client)

    def admit(
        self,
        authorization: str | None,
        api_key: str | None,
        repeated: bool = False,
        admin: bool = False,
    ) -> Client:
        """identify, then limit: the client, held to its rate."""
        client = self.identify(authorization, api_key, repeated, admin)
        self.limit(client)
        return client

    @staticmethod
    def check_model(client: Client, model: str) -> None:
        """Forbidden when the client's key does not cover ``model`` (whether or not
        such a model exists: a key learns nothing of models it may not call)."""
        if not client.may_call(model):
            raise Forbidden(f"key '{client.name}' may not call model '{shown(model)}'")

    @staticmethod
    def visible(client: Client, names: Iterable[str]) -> list[str]:
        return [name for name in names if client.may_call(name)]

    def refresh(self) -> bool:
        """Read the keys file again if it changed; whether the keys in force did. A
        file that moved while it was read (being written) waits for the next look."""
        seen = _signature(self.source.file)
        if seen == self._seen:
            return False
        try:
            ring = self.source.load()
        except ConfigError as exc:
            self._seen = seen  # said once, not at every look
            log.error("keys file refused, the keys in force stay: %s", exc)
            return False
        if _signature(self.source.file) != seen:
            return False
        self._seen = seen
        self.ring = ring
        log.info("keys file read: %d keys", len(ring.clients) if ring is not None else 0)
        return True


def _signature(path: Path | None) -> tuple[int, int, int, int] | None:
    """What changes when the file does: its inode (an atomic rename), size and times
    (a Swarm secret update, an edit in place). None: no file (or none there now)."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
