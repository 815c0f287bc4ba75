"""docker-stack.yml against the production compose files (docker-compose.yml +
docker-compose.prod.yml, merged): the model server must be the same deployment on
either engine. Image, environment, health check, limits, secret, volumes, user and
hardening must agree, except where Swarm needs otherwise, and each such difference
is listed here with its reason. The edge's client limits must be the compose
proxy's. And the update policy must be one that cannot report a bad release done."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mlapi.doctor.merge import merged

ROOT = Path(__file__).resolve().parents[2]
PROD = [ROOT / "docker-compose.yml", ROOT / "docker-compose.prod.yml"]
STACK = ROOT / "docker-stack.yml"

# What only the stack sets, and why (README "Scale out with Docker Swarm").
SWARM_ONLY_ENV = {
    "MLAPI_SEED_MODELS",  # no one-shot model-init that replicas could wait for
    "MLAPI_DRAIN_GRACE_S",  # not ready for longer than the proxy's DNS cache
}
# Where the stack keeps the models: an empty folder of the image, so that a fresh
# volume gets its owner and no copy the replicas would race to make.
SWARM_PATHS = {"/app/models": "/app/repository"}
# What `docker stack deploy` ignores or refuses, and what stands in for it.
COMPOSE_ONLY_KEYS = {
    "build",  # images are built before a deploy
    "restart",  # deploy.restart_policy
    "security_opt",  # ignored by Swarm: no setuid/setgid file in the image instead
    "depends_on",  # MLAPI_SEED_MODELS; the health check gates traffic
    "ports",  # the edge service, on 127.0.0.1 only
    "tmpfs",  # Swarm drops the short form: the stack mounts one (compared as such)
}


def _durations(text: str) -> float:
    """Seconds of a compose duration such as 1m30s, 80s, 2s."""
    parts = re.findall(r"([0-9.]+)(h|m|s|ms)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, short or long syntax (not tmpfs)."""
    found = {}
    for item in service.get("volumes", []):
        if isinstance(item, str):
            source, target = item.split(":")[:2]
        elif item.get("type") == "tmpfs":
            continue
        else:
            source, target = item["source"], item["target"]
        found[SWARM_PATHS.get(target, target)] = source
    return found


def _tmpfs(service: dict[str, Any]) -> set[str]:
    """The tmpfs mounts: the compose key, or long-syntax volumes (the stack's form)."""
    found = {item.split(":")[0] for item in service.get("tmpfs", [])}
    for item in service.get("volumes", []):
        if isinstance(item, dict) and item.get("type") == "tmpfs":
            found.add(item["target"])
    return found


def differences(compose: dict[str, Any], stack: dict[str, Any]) -> list[str]:
    """Where the stack's model server is not the production compose one."""
    ours, theirs = compose["services"]["ml-api"], stack["services"]["ml-api"]
    found = []

    def same(what: str, left: object, right: object) -> None:
        if left != right:
            found.append(f"{what}: compose {left!r}, stack {right!r}")

    same("image", ours["image"], theirs["image"])
    env = {k: v for k, v in theirs["environment"].items() if k not in SWARM_ONLY_ENV}
    expected = {k: SWARM_PATHS.get(v, v) for k, v in ours["environment"].items()}
    same("environment", expected, env)
    same("healthcheck", ours["healthcheck"], theirs["healthcheck"])
    # `docker stack deploy` refuses a pids limit ("Additional property pids is not
    # allowed"): README says how to set it on the service
    limits = {k: v for k, v in ours["deploy"]["resources"]["limits"].items() if k != "pids"}
    same("limits", limits, theirs["deploy"]["resources"]["limits"])
    same(
        "reservations",
        ours["deploy"]["resources"]["reservations"],
        theirs["deploy"]["resources"]["reservations"],
    )
    same("replicas", ours["deploy"]["replicas"], theirs["deploy"]["replicas"])
    same("volumes", _mounts(ours), _mounts(theirs))
    same(
        "secret targets",
        [s if isinstance(s, str) else s["target"] for s in ours["secrets"]],
        [s if isinstance(s, str) else s["target"] for s in theirs["secrets"]],
    )
    same("secret file", compose["secrets"]["api_key"]["file"], stack["secrets"]["api_key"]["file"])
    same("model cache volume", compose["volumes"]["model_cache"], stack["volumes"]["model_cache"])
    for key in ("user", "read_only", "cap_drop", "stop_grace_period"):
        same(key, ours.get(key), theirs.get(key))
    same("tmpfs", _tmpfs(ours), _tmpfs(theirs))
    unexplained = set(ours) - set(theirs) - COMPOSE_ONLY_KEYS
    if unexplained:
        found.append(f"keys only compose has: {sorted(unexplained)}")
    return found


def _read(env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    variables = env or {}
    return merged(PROD, variables), merged([STACK], variables)


@pytest.mark.parametrize(
    "env",
    [{}, {"ML_API_MEMORY": "3g", "ML_API_CPUS": "4", "WORKERS": "4", "MODEL_VERSION": "2"}],
    ids=["defaults", "sized"],
)
def test_the_stack_runs_the_production_model_server(env: dict[str, str]) -> None:
    compose, stack = _read(env)
    assert differences(compose, stack) == []


def test_with_keys_per_client_the_stack_is_still_the_production_server() -> None:
    """docker-compose.keys.yml and docker-stack.keys.yml add the same keys file, at the
    same path, from the same host file (README "Keys for each client")."""
    compose = merged([*PROD, ROOT / "docker-compose.keys.yml"], {})
    stack = merged([STACK, ROOT / "docker-stack.keys.yml"], {})
    assert differences(compose, stack) == []
    env = compose["services"]["ml-api"]["environment"]
    assert env["API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert compose["secrets"]["api_keys"]["file"] == stack["secrets"]["api_keys"]["file"]
    targets = [
        s if isinstance(s, str) else s["target"] for s in compose["services"]["ml-api"]["secrets"]
    ]
    assert targets == ["api_key", "api_keys"]


def test_a_drift_is_caught(tmp_path: Path) -> None:
    """The comparison fails on the things it must: a copy of the stack file with a
    limit, a variable and a volume changed."""
    drifted = tmp_path / "docker-stack.yml"
    text = STACK.read_text()
    text = text.replace("memory: ${ML_API_MEMORY:-1g}", "memory: ${ML_API_MEMORY:-2g}")
    text = text.replace('MLAPI_REQUIRE_AUTH: "true"', 'MLAPI_REQUIRE_AUTH: "false"')
    text = text.replace("- ml_logs:/app/logs", "- ml_logs:/app/log")
    drifted.write_text(text)
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    found = differences(merged(PROD, {}), merged([drifted], {}))
    assert [line.split(":")[0] for line in found] == ["environment", "limits", "volumes"], found


def test_a_bad_update_cannot_be_reported_done() -> None:
    """Swarm stops watching a new task after `monitor`: it must cover the health
    check's whole grace (start_period + interval x retries), or a replica that never
    gets healthy passes; for rollbacks too. One at a time, the new one first."""
    _, stack = _read()
    service = stack["services"]["ml-api"]
    check = service["healthcheck"]
    grace = _durations(check["start_period"]) + _durations(check["interval"]) * check["retries"]
    for policy in ("update_config", "rollback_config"):
        config = service["deploy"][policy]
        assert _durations(config["monitor"]) > grace, (policy, config["monitor"], grace)
        assert config["parallelism"] == 1 and config["order"] == "start-first"
    assert service["deploy"]["update_config"]["failure_action"] == "rollback"
    assert service["deploy"]["endpoint_mode"] == "dnsrr"
    drain = float(service["environment"]["MLAPI_DRAIN_GRACE_S"])
    resolver = re.search(
        r"resolver .* valid=(\d+)s", (ROOT / "deploy/nginx/swarm-proxy.conf").read_text()
    )
    assert resolver is not None and drain > float(resolver.group(1))


def test_nothing_is_published_and_the_edge_listens_on_loopback_only() -> None:
    _, stack = _read()
    for name, service in stack["services"].items():
        assert "ports" not in service, name
    edge = (ROOT / "deploy/nginx/swarm-edge.conf").read_text()
    listens = re.findall(r"^\s*listen\s+([^;]+);", edge, re.MULTILINE)
    assert listens and all(item.startswith("127.0.0.1:") for item in listens), listens


CLIENT_LIMITS = (
    "client_max_body_size",
    "client_header_timeout",
    "client_body_timeout",
    "send_timeout",
    "keepalive_timeout",
    "client_header_buffer_size",
    "large_client_header_buffers",
)


def _directives(path: Path) -> dict[str, str]:
    text = path.read_text()
    return {
        name: match.group(1)
        for name in CLIENT_LIMITS
        if (match := re.search(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE))
    }


def test_the_edge_holds_clients_to_the_compose_proxys_limits() -> None:
    compose = _directives(ROOT / "deploy/nginx/nginx.conf")
    assert len(compose) == len(CLIENT_LIMITS)
    assert _directives(ROOT / "deploy/nginx/swarm-edge.conf") == compose
