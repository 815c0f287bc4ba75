"""doctor's own reading of compose files: Compose's interpolation and merge rules,
and the one shape both readers are turned into."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlapi.doctor import merge, source
from mlapi.doctor.interpolate import interpolate, read_env_file
from mlapi.doctor.view import Mount, Port, seconds, size_bytes
from mlapi.errors import ConfigError

ENV = {"SET": "value", "EMPTY": "", "NESTED": "inner"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$SET/${SET}", "value/value"),
        ("${UNSET}", ""),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY-fallback}", ""),
        ("${UNSET-fallback}", "fallback"),
        ("${SET:+other}", "other"),
        ("${EMPTY:+other}", ""),
        ("${EMPTY+other}", "other"),
        ("${UNSET:-${NESTED}-x}", "inner-x"),
        ("$$SET and $${SET}", "$SET and ${SET}"),
        ("cost: 5$", "cost: 5$"),
        ("${SET:?needed}", "value"),
    ],
)
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize("text", ["${UNSET:?set it}", "${EMPTY:?set it}", "${UNSET?set it}"])
def test_a_required_variable_unset_is_an_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=r"UNSET|EMPTY"):
        interpolate(text, ENV)


@pytest.mark.parametrize("text", ["${", "${1X}", "${SET!x}"])
def test_malformed_interpolation_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError):
        interpolate(text, ENV)


def test_env_file_forms(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        '# comment\n\nA=1\nexport B = two words \nC=\'$literal # x\'\nD="q\\"uote"\nE=x # note\n'
    )
    assert read_env_file(path) == {
        "A": "1",
        "B": "two words",
        "C": "$literal # x",
        "D": 'q"uote',
        "E": "x",
    }
    path.write_text("not a line\n")
    with pytest.raises(ConfigError, match=r"\.env:1"):
        read_env_file(path)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_merge_rules(tmp_path: Path) -> None:
    base = _write(
        tmp_path,
        "a.yml",
        """
        x-common: &common
          cap_drop: [ALL]
          restart: always
        services:
          api:
            <<: *common
            image: ml-api:${TAG:-1}
            command: [serve, --workers, "2"]
            environment: [A=1, B=2]
            ports: ["127.0.0.1:8000:8000"]
            volumes: ["models:/app/models", "logs:/app/logs"]
            secrets: [api_key]
            cap_drop: [ALL]
        secrets:
          api_key: {file: ./key.txt}
        """,
    )
    over = _write(
        tmp_path,
        "b.yml",
        """
        services:
          api:
            command: [serve]
            environment: {B: "3", C: "4"}
            ports: !reset []
            volumes: ["other:/app/models"]
            cap_drop: [ALL, NET_RAW]
        secrets:
          api_key: !override
            environment: KEY
        """,
    )
    data = merge.merged([base, over], {"TAG": "7"})
    api = data["services"]["api"]
    assert api["image"] == "ml-api:7"
    assert api["command"] == ["serve"]
    assert merge.as_mapping(api["environment"]) == {"A": "1", "B": "3", "C": "4"}
    assert "ports" not in api
    assert api["volumes"] == ["other:/app/models", "logs:/app/logs"]
    assert api["cap_drop"] == ["ALL", "NET_RAW"]
    assert api["restart"] == "always"
    assert data["secrets"]["api_key"] == {"environment": "KEY"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [unclosed\n", r"b\.yml:\d+: not valid YAML"),
        ("- a list\n", "mapping at the top"),
        ("include: [other.yml]\n", "needs Docker Compose"),
        ("services:\n  a:\n    extends: {service: b}\n", "needs Docker Compose"),
        ("services:\n  a:\n    image: ${NAME:?give NAME}\n", "NAME"),
    ],
)
def test_files_it_cannot_read_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        merge.merged([_write(tmp_path, "b.yml", text)], {})


def test_the_default_files_are_what_docker_compose_reads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no compose file"):
        source.default_files(tmp_path)
    base = _write(tmp_path, "docker-compose.yml", "services: {}\n")
    assert source.default_files(tmp_path) == [base]
    override = _write(tmp_path, "docker-compose.override.yml", "services: {}\n")
    assert source.default_files(tmp_path) == [base, override]


def test_variables_come_from_the_environment_over_the_env_file(tmp_path: Path) -> None:
    _write(tmp_path, ".env", "A=file\nB=file\n")
    assert source.variables(tmp_path, None, {"B": "shell"}) == {"A": "file", "B": "shell"}
    with pytest.raises(ConfigError, match="no such file"):
        source.variables(tmp_path, tmp_path / "missing.env", {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("1m0s", 60), ("1h2m3.5s", 3723.5), ("500ms", 0.5), ("90", 90), (None, None)],
)
def test_durations(text: str | None, expected: float | None) -> None:
    assert seconds(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1g", 1 << 30),
        ("512m", 512 << 20),
        ("1073741824", 1 << 30),
        ("1.5G", 3 << 29),
        ("2gb", 2 << 30),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert size_bytes(text) == expected


@pytest.mark.parametrize("text", ["1 minute", "5x", "-1s"])
def test_a_bad_duration_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        seconds(text)


def test_short_and_long_forms_are_one_shape(tmp_path: Path) -> None:
    short = _write(
        tmp_path,
        "docker-compose.yml",
        """
        services:
          api:
            image: ml-api:1
            ports: ["127.0.0.1:8000:8000", "9000:9000", "[::1]:7000:7000/tcp", "6000"]
            volumes: ["models:/app/models", "./src:/app/src:ro", "/data"]
        """,
    )
    deployment = source.read([short], None, {}, use_compose=False)
    api = deployment.services["api"]
    assert api.ports == (
        Port("127.0.0.1", "8000", 8000),
        Port("", "9000", 9000),
        Port("::1", "7000", 7000),
        Port("", "", 6000),
    )
    assert api.mounts == (
        Mount("volume", "models", "/app/models"),
        Mount("bind", str(tmp_path / "src"), "/app/src"),
        Mount("volume", None, "/data"),
    )


def _laughs(levels: int) -> str:
    """A 'billion laughs' compose file: each level is ten aliases of the one before."""
    lines = ["x-0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"x-{level}: &l{level} [{refs}]")
    lines.append(f"services: {{api: {{image: x, labels: {{big: *l{levels}}}}}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_laughs(9), "expands to more than 100,000 values"),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nest"),
        (
            "services:\n  api:\n    image: " + "${A:-" * 2000 + "x" + "}" * 2000 + "\n",
            "variables nest deeper than 16 levels",
        ),
    ],
    ids=["billion laughs", "2000 levels deep", "2000 nested defaults"],
)
def test_hostile_yaml_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    """A 10 KB file that expanded to a billion values took 16.8 s and 611 MB at seven
    levels and ran out of memory at nine; deep nesting raised RecursionError."""
    path = tmp_path / "compose.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        merge.merged([path], {})


def test_interpolation_nests_at_most_sixteen_levels() -> None:
    deep = "${A:-" * 17 + "x" + "}" * 17
    with pytest.raises(ConfigError, match="nest deeper than 16 levels"):
        interpolate(deep, {})
    assert interpolate("${A:-" * 3 + "x" + "}" * 3, {}) == "x"


def test_an_env_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"API_PORT=\xff\xfe8000\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_env_file(path)


def test_numbers_in_other_scripts_and_non_finite_cpus_are_refused_not_crashed() -> None:
    from mlapi.doctor import view

    assert view.whole("²") is None and view.whole("v2") is None and view.whole(" 12 ") == 12
    for bad in ("nan", "inf", "-1", "two"):
        with pytest.raises(ConfigError, match="is not a number of CPUs"):
            view._float(bad)
    assert view._float("1.5") == 1.5
