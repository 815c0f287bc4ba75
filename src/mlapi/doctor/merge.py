"""doctor's own reading of compose files, for a machine without Docker Compose: the
files merged in order by the Compose specification's rules, with variables
interpolated and the ``!reset`` / ``!override`` tags honoured. Every profile's
services are kept (as ``docker compose --profile '*' config`` does). What it does not
read (``include``, ``extends``) is an error that says to install Compose."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlapi.doctor.interpolate import interpolate
from mlapi.errors import ConfigError

# Lists merged by a key (the mount target, or the name), replaced, or unique-appended.
_KEYED_LISTS = {"volumes": "target", "secrets": "source", "configs": "source"}
_REPLACED = {"command", "entrypoint", "test"}
_MAPPING_LISTS = {"environment", "labels", "extra_hosts", "sysctls", "annotations"}


class _Reset:
    """``!reset``: the key is removed from what the files before it said."""


RESET = _Reset()


class _Override:
    """``!override VALUE``: the key takes VALUE whole, not merged."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> _Reset:
    return RESET


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError("!override on a value that is not a mapping, list or scalar")
    return _Override(loader.construct_scalar(node))


_Loader.add_constructor("!reset", _reset)
_Loader.add_constructor("!override", _override)


# What one compose file may expand to: its values counted with every alias expanded
# (a 10 KB "billion laughs" file of nested aliases is a billion values), and how deep
# its values nest. A real compose file is a few hundred values, a dozen deep.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def load_yaml(path: Path) -> dict[str, Any]:
    """One compose file as written (no interpolation), within the budgets above."""
    try:
        loader = _Loader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_budget(node, path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: values nest too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a compose file is a mapping at the top")
    return dict(data)


def _check_budget(root: yaml.Node, path: Path) -> None:
    """ConfigError when the document, aliases expanded, holds more than MAX_VALUES
    values or nests deeper than MAX_DEPTH. Counted over the node graph, each shared
    node once (memoized), so the count itself costs what the file's size does."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}: values nest deeper than {MAX_DEPTH} levels")
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        if total > MAX_VALUES:
            raise ConfigError(
                f"{path}: expands to more than {MAX_VALUES:,} values (aliases of aliases?)"
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def merged(paths: list[Path], env: Mapping[str, str]) -> dict[str, Any]:
    """The files merged in order, variables interpolated, relative paths resolved
    against the first file's folder (the project directory)."""
    result: dict[str, Any] = {}
    for path in paths:
        data = load_yaml(path)
        for key in ("include",):
            if key in data:
                raise ConfigError(f"{path}: '{key}' needs Docker Compose to read")
        for name, service in (data.get("services") or {}).items():
            if isinstance(service, dict) and "extends" in service:
                raise ConfigError(f"{path}: service {name} uses 'extends': needs Docker Compose")
        data = _interpolated(data, env, f" in {path.name}")
        result = _merge(result, data, ())
    stripped: dict[str, Any] = _strip(result)
    return stripped


def _interpolated(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return interpolate(value, env, where)
    if isinstance(value, _Override):
        return _Override(_interpolated(value.value, env, where))
    if isinstance(value, dict):
        return {key: _interpolated(item, env, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolated(item, env, where) for item in value]
    return value


def _merge(base: Any, over: Any, path: tuple[str, ...]) -> Any:
    if isinstance(over, _Override):
        return over.value
    key = path[-1] if path else ""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for name, value in over.items():
            if value is RESET:
                out.pop(name, None)
            elif name in out:
                out[name] = _merge(out[name], value, (*path, str(name)))
            else:
                out[name] = value
        return out
    in_service = len(path) >= 3 and path[0] == "services"
    if in_service and key in _MAPPING_LISTS:
        return _merge(as_mapping(base), as_mapping(over), (*path[:-1], "_mapping"))
    if isinstance(base, list) and isinstance(over, list):
        if key in _REPLACED:
            return over
        if in_service and len(path) == 3 and key in _KEYED_LISTS:
            return _merge_keyed(base, over, _KEYED_LISTS[key])
        return base + [item for item in over if item not in base]
    return over


def _merge_keyed(base: list[Any], over: list[Any], key: str) -> list[Any]:
    """Volumes by mount target, secrets and configs by source: a later entry for the
    same one replaces it."""
    keyed: dict[str, Any] = {}
    for item in [*base, *over]:
        keyed[_list_key(item, key)] = item
    return list(keyed.values())


def _list_key(item: Any, key: str) -> str:
    if isinstance(item, dict):
        return str(item.get(key) or item.get("source") or item)
    text = str(item)
    if key == "target":  # volume short form: source:target[:mode], or a bare target
        parts = text.split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    return text


def as_mapping(value: Any) -> dict[str, Any]:
    """``environment`` (or labels...) as a mapping: ``KEY=VALUE`` items split; a bare
    ``KEY`` maps to None."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        name, sep, rest = str(item).partition("=")
        out[name] = rest if sep else None
    return out


def _strip(value: Any) -> Any:
    """The merged data without the tag wrappers left where nothing was overridden."""
    if isinstance(value, _Override):
        return _strip(value.value)
    if isinstance(value, dict):
        return {key: _strip(item) for key, item in value.items() if item is not RESET}
    if isinstance(value, list):
        return [_strip(item) for item in value if item is not RESET]
    return value
