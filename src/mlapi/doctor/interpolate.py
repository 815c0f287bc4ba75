"""Compose's variable interpolation, for the merge doctor does itself when Compose is
not installed: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:+other}``, ``${VAR+other}``, ``${VAR:?error}``, ``${VAR?error}`` (defaults may
hold further variables) and ``$$`` for a dollar sign. Values come from the process
environment first, then the env file (``.env`` beside the first compose file), as
Compose reads them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from mlapi.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments; single quotes literal, double quotes with escapes."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line)
        if match is None:
            raise ConfigError(f"{path}:{number}: not a KEY=VALUE line")
        values[match.group(1)] = _env_value(match.group(2))
    return values


def _env_value(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] == "'" and raw.count("'") >= 2:
        return raw[1 : raw.index("'", 1)]
    if raw[:1] == '"' and raw.count('"') >= 2:
        body = raw[1 : raw.rindex('"')]
        return body.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


MAX_NESTING = 16  # ${A:-${B:-...}} levels: real files use one or two


def interpolate(text: str, env: Mapping[str, str], where: str = "", depth: int = 0) -> str:
    """``text`` with every variable replaced. An unset variable without a default is
    empty (Compose warns and does the same); ``${VAR:?msg}`` unset is an error."""
    if depth > MAX_NESTING:
        raise ConfigError(f"variables nest deeper than {MAX_NESTING} levels{where}")
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env, where, depth))
            i = end + 1
        else:
            match = _NAME.match(text, i + 1)
            if match is None:
                out.append("$")
                i += 1
            else:
                out.append(env.get(match.group(0), ""))
                i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise ConfigError(f"{text[:64]!r}: '${{' without its closing brace")


def _expand(body: str, env: Mapping[str, str], where: str, depth: int) -> str:
    match = _NAME.match(body)
    if match is None:
        raise ConfigError(f"invalid interpolation '${{{body[:64]}}}'")
    name, rest = match.group(0), body[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for operator in (":-", "-", ":+", "+", ":?", "?"):
        if rest.startswith(operator):
            argument = interpolate(rest[len(operator) :], env, where, depth + 1)
            break
    else:
        raise ConfigError(f"invalid interpolation '${{{body[:64]}}}'")
    empty_counts = operator.startswith(":")
    unset = value is None or (empty_counts and value == "")
    if operator in (":-", "-"):
        return argument if unset else str(value)
    if operator in (":+", "+"):
        return "" if unset else argument
    if unset:
        raise ConfigError(f"required variable {name} is missing a value: {argument}{where}")
    return str(value)
