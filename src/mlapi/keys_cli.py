"""``mlapi keys add|list|revoke``: the keys file (API_KEYS_FILE) kept by hand no more.

``add`` makes a random key (32 bytes from the system's CSPRNG), prints it once on
stdout and writes only its SHA-256 into the file; ``list`` shows names, models,
rates and admin rights, never a digest; ``revoke`` takes an entry out. A running
server reads the file again within MLAPI_KEYS_POLL_S seconds: no restart.

The file is rewritten in place (its inode, owner and mode kept), because Docker
Compose mounts a secret's file by its inode: a file replaced by a rename on the
host would never reach the containers. The new text is checked whole before it is
written; a server that reads the file mid-write finds a change that does not parse
(or a size that moved while it read) and keeps the keys it has until its next look."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from mlapi.errors import ConfigError
from mlapi.serving import keys

PREFIX = "mlapi_"  # a key says what it is (secret scanners, a reader of a config)
HEADER = (
    "# ml-api keys, written by `mlapi keys`: the SHA-256 of each client's key, never the key.\n"
)


def add(
    path: Path,
    name: str,
    models: list[str] | None,
    rate: float | None,
    burst: int | None,
    admin: bool,
) -> str:
    """A new key for ``name``, written into the file; the key (shown once)."""
    entries = keys.read_file(path) if path.exists() else []
    if any(entry.get("name") == name for entry in entries):
        raise ConfigError(f"a key named '{name}' is in {path} already: revoke it first")
    key = PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest()}
    if models is not None:
        entry["models"] = models
    if admin:
        entry["admin"] = True
    if rate is not None:
        entry["rate"] = rate
    if burst is not None:
        entry["burst"] = burst
    _write(path, [*entries, entry])
    return key


def revoke(path: Path, name: str) -> None:
    entries = keys.read_file(path)
    kept = [entry for entry in entries if entry.get("name") != name]
    if len(kept) == len(entries):
        raise ConfigError(f"no key named '{name}' in {path}")
    _write(path, kept)


def listing(path: Path) -> list[str]:
    """One line a client: name, models, rate, admin (never its digest)."""
    clients = keys.parse_entries(keys.read_file(path))
    lines = []
    for client in sorted(clients.values(), key=lambda c: c.name):
        rate = f"{client.rate:g}/s burst {client.burst}" if client.rate is not None else "no limit"
        fields = [client.name, f"models {','.join(client.models)}", f"rate {rate}"]
        lines.append("\t".join([*fields, "admin"] if client.admin else fields))
    return lines


def render(entries: list[dict[str, Any]]) -> str:
    """The file's text. Strings are written as JSON writes them, which TOML reads."""
    blocks = [HEADER]
    for entry in entries:
        lines = ["[[key]]"]
        for field in ("name", "sha256", "models", "admin", "rate", "burst"):
            if field in entry:
                lines.append(f"{field} = {_value(entry[field])}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(str(value))


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    text = render(entries)
    keys.parse_entries(entries)  # every entry as the server will read it
    data = text.encode()
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    else:
        fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)  # in place: the inode a bind mount holds stays
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def main(args: Any) -> int:
    path = args.file or os.environ.get("API_KEYS_FILE")
    if not path:
        raise ConfigError("which keys file? give --file or set API_KEYS_FILE")
    target = Path(path)
    if args.keys_command == "add":
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        key = add(target, args.name, models, args.rate, args.burst, args.admin)
        sys.stdout.write(key + "\n")
        sys.stderr.write(
            f"key '{args.name}' added to {target}; it is shown this once: give it to the "
            "client now\n"
        )
        return 0
    if args.keys_command == "revoke":
        revoke(target, args.name)
        sys.stderr.write(f"key '{args.name}' revoked in {target}\n")
        return 0
    for line in listing(target):
        sys.stdout.write(line + "\n")
    return 0
