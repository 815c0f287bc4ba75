"""``mlapi models publish --strategy``: one version's rollout strategy, written into
its own ``model.toml`` before it is published (so its manifest and fingerprint hold
it). The file is edited as text, so the user's comments and layout stay; the result
is parsed back and must be the same table with the strategy set, else the publish
stops and says to set it by hand."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from mlapi.errors import ConfigError
from mlapi.repository.config import STRATEGIES

_ROLLOUT_HEADER = re.compile(r"^[ \t]*\[[ \t]*rollout[ \t]*\][ \t]*(#.*)?$", re.MULTILINE)


def write(path: Path, strategy: str) -> None:
    """Set ``[rollout] strategy`` in the model.toml at ``path`` (made if missing)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}")
    line = f'strategy = "{strategy}"'
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        path.write_text(f"[rollout]\n{line}\n", encoding="utf-8")
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} cannot be read ({type(exc).__name__})") from None
    before = _parse(text, path.name)
    rollout = before.get("rollout")
    if isinstance(rollout, dict) and rollout.get("strategy") == strategy:
        return
    if isinstance(rollout, dict) and "strategy" in rollout:
        raise ConfigError(
            f"{path.name} names strategy {rollout['strategy']!r} already: change it there, "
            f"or publish without --strategy"
        )
    header = _ROLLOUT_HEADER.search(text)
    if rollout is None:
        edited = text + ("" if text.endswith("\n") or not text else "\n") + f"\n[rollout]\n{line}\n"
    elif header is not None:
        edited = f"{text[: header.end()]}\n{line}{text[header.end() :]}"
    else:
        edited = ""
    expected = {**before, "rollout": {**(rollout or {}), "strategy": strategy}}
    if not edited or _parse(edited, path.name) != expected:
        raise ConfigError(
            f"{path.name}: its [rollout] table could not be edited safely: add "
            f"{line} to it by hand, or publish without --strategy"
        )
    path.write_text(edited, encoding="utf-8")


def _parse(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name} is not valid TOML: {exc}") from None
