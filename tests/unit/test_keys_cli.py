"""`mlapi keys` on a file (keys_cli.py): a key printed once and only its digest
written, names unique, a revoked entry gone, the file rewritten in place (a Compose
secret is mounted by its inode), and nothing written that the server would refuse."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlapi import keys_cli
from mlapi.errors import ConfigError
from mlapi.serving import keys
from mlapi.serving.keys import Client


def test_a_key_is_added_as_its_digest_and_names_its_client(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    key = keys_cli.add(path, "search", ["iris", "text-*"], 20.0, 5, admin=False)
    assert key.startswith("mlapi_") and len(key) == len("mlapi_") + 43
    text = path.read_text()
    assert key not in text and key[6:] not in text
    assert hashlib.sha256(key.encode()).hexdigest() in text
    assert path.stat().st_mode & 0o777 == 0o600
    admin_key = keys_cli.add(path, "ops", None, None, None, admin=True)
    ring = keys.ring_of(keys.parse_entries(keys.read_file(path)), None, None)
    assert ring is not None
    assert ring.identify(None, key) == Client("search", ("iris", "text-*"), False, 20.0, 5)
    assert ring.identify(f"Bearer {admin_key}", None) == Client("ops", admin=True)
    assert keys_cli.listing(path) == [
        "ops\tmodels *\trate no limit\tadmin",
        "search\tmodels iris,text-*\trate 20/s burst 5",
    ]
    assert key != keys_cli.add(path, "third", None, None, None, False)  # random each time


def test_names_are_unique_revoked_ones_go_and_bad_entries_are_never_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.toml"
    keys_cli.add(path, "a", None, None, None, False)
    with pytest.raises(ConfigError, match=r"a key named 'a' is in .* already: revoke it first"):
        keys_cli.add(path, "a", None, None, None, False)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="'name' must be 1 to 64 letters"):
        keys_cli.add(path, "bad name", None, None, None, False)
    with pytest.raises(ConfigError, match="'burst' needs a 'rate'"):
        keys_cli.add(path, "b", None, None, 3, False)
    assert path.read_bytes() == before
    keys_cli.add(path, "b", ['we"ird\\glob*'], None, None, False)
    keys_cli.revoke(path, "a")
    assert [line.split("\t")[0] for line in keys_cli.listing(path)] == ["b"]
    assert keys_cli.listing(path)[0].split("\t")[1] == 'models we"ird\\glob*'
    with pytest.raises(ConfigError, match="no key named 'a'"):
        keys_cli.revoke(path, "a")


def test_the_file_is_rewritten_in_place_keeping_its_inode_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("")
    path.chmod(0o640)
    inode = path.stat().st_ino
    keys_cli.add(path, "long-name-" + "x" * 50, None, None, None, False)
    keys_cli.add(path, "b", None, None, None, False)
    keys_cli.revoke(path, "long-name-" + "x" * 50)  # shorter: the old tail is cut
    assert path.stat().st_ino == inode and path.stat().st_mode & 0o777 == 0o640
    assert path.read_text() == keys_cli.render(keys.read_file(path))


def test_the_command_prints_the_key_alone_and_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    env = {**os.environ, "API_KEYS_FILE": str(path)}

    def mlapi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "mlapi"), "keys", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    added = mlapi("add", "app", "--models", "iris, other", "--rate", "2.5")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert added.stdout == key + "\n" and key.startswith("mlapi_")
    assert "shown this once" in added.stderr and key not in added.stderr
    listed = mlapi("list")
    assert listed.stdout == "app\tmodels iris,other\trate 2.5/s burst 3\n"
    for args, message in [
        (["add", "app"], "a key named 'app' is in"),
        (["revoke", "ghost"], "no key named 'ghost'"),
        (["--file", str(tmp_path / "none.toml"), "list"], "does not exist"),
    ]:
        failed = mlapi(*args)
        assert (
            failed.returncode == 2 and failed.stderr.count("\n") == 1 and message in failed.stderr
        )
    assert mlapi("add", "x", "--rate", "0").returncode == 2  # argparse: over 0
    del env["API_KEYS_FILE"]
    assert "give --file or set API_KEYS_FILE" in mlapi("list").stderr
