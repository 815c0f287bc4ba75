"""The package's import rules (STYLE.md, issue 21), read from the source with ast:
the fronts (api/ for HTTP, rpc/ for gRPC) never import each other or each other's
framework; nothing below the fronts imports a front or a web framework; imports
flow one way, so no package imports one above it and no two packages import each
other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mlapi"
# Lower packages may not import the higher ones (cli -> server -> app -> fronts ->
# serving -> registry/batching -> runtimes -> repository).
ORDER = ["repository", "runtimes", "batching", "registry", "serving", "api", "rpc", "app"]
FRAMEWORKS = {"starlette": "HTTP", "uvicorn": "HTTP", "grpc": "gRPC", "google": "gRPC"}


def _package(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py") if relative.parts else ""


def _imports() -> dict[str, set[str]]:
    """Each package (or top module) -> the mlapi packages and frameworks it imports,
    at module level or inside functions alike."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        package = _package(path)
        targets = found.setdefault(package, set())
        for name in names:
            parts = name.split(".")
            if parts[0] == "mlapi" and len(parts) > 1:
                targets.add(parts[1])
            elif parts[0] in FRAMEWORKS:
                targets.add(parts[0])
        targets.discard(package)
    return found


IMPORTS = _imports()


@pytest.mark.parametrize(("front", "other"), [("api", "rpc"), ("rpc", "api")])
def test_the_fronts_never_import_each_other_or_each_others_framework(
    front: str, other: str
) -> None:
    assert other not in IMPORTS[front]
    forbidden = {"grpc", "google"} if front == "api" else {"starlette", "uvicorn"}
    assert not IMPORTS[front] & forbidden, IMPORTS[front] & forbidden


@pytest.mark.parametrize("package", ["serving", "registry", "batching", "runtimes", "repository"])
def test_below_the_fronts_no_front_and_no_web_framework(package: str) -> None:
    assert not IMPORTS[package] & {"api", "rpc", "app", "server", "cli"}, IMPORTS[package]
    assert not IMPORTS[package] & {"starlette", "uvicorn", "grpc", "google"}, IMPORTS[package]


def test_imports_flow_one_way() -> None:
    for lower, package in enumerate(ORDER):
        above = set(ORDER[lower + 1 :])
        assert not IMPORTS.get(package, set()) & above, (package, IMPORTS[package] & above)


def test_no_two_packages_import_each_other() -> None:
    packages = [p for p in IMPORTS if (SRC / p).is_dir()]
    cycles = [
        (a, b) for a in packages for b in packages if a < b and b in IMPORTS[a] and a in IMPORTS[b]
    ]
    assert cycles == []
