"""deploy/kubernetes against the Kubernetes schemas, checkov's policies and the
production compose files (docker-compose.yml + docker-compose.prod.yml, merged): the
model server must be the same deployment on either engine. Rendered by `kubectl
kustomize` (kubectl 1.32, kustomize 5.5), checked by `kubernetes-validate` (the 1.32
schemas, strict) and `checkov` (every check; the two it fails are listed with their
reason). Nothing here runs a cluster: none runs on this machine."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlapi.doctor.merge import merged

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
PROD = [ROOT / "docker-compose.yml", ROOT / "docker-compose.prod.yml"]
# checkov and kubernetes-validate pin dependencies of their own: a venv of their own
# (`make test` and `make test-fast` make it)
TOOLS = Path(os.environ.get("MLAPI_K8S_TOOLS", ROOT / ".venv-k8s")) / "bin"
KUBERNETES = "1.32.0"

# What only the manifests set, and why (README, "Kubernetes").
K8S_ONLY_ENV = {"MLAPI_SEED_MODELS"}  # no one-shot model-init that pods could wait for
# checkov checks the manifests fail on purpose
ACCEPTED_CHECKS = {
    # the overlay pins a version tag; a digest exists only once the image is pushed
    # to your registry (set `digest:` under `images:` then)
    "CKV_K8S_43",
    # the image's user is 1000, as under compose, where the volumes' files belong to
    # it; a different uid here would own the same files differently
    "CKV_K8S_40",
}


def _seconds(text: str) -> float:
    parts = re.findall(r"([0-9.]+)(h|m|s|ms)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _bytes(text: str) -> int:
    """Bytes of a compose size (1g, 64m) or a Kubernetes quantity (1Gi, 64Mi)."""
    match = re.fullmatch(r"(\d+)([kKmMgG]i?)?b?", str(text))
    assert match, text
    unit = (match.group(2) or "").lower().rstrip("i")
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def _cpus(text: str) -> float:
    value = str(text)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test-fast` installs it (Makefile, .venv-k8s)")
    return str(path)


@dataclass
class Rendered:
    path: Path
    documents: list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """The base and the production overlay as `kubectl kustomize` renders them (the
    overlay with a key file made here, as a user makes theirs)."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed: the manifests are rendered by `kubectl kustomize`")
    copied = tmp_path_factory.mktemp("kube") / "kubernetes"
    shutil.copytree(KUBE, copied)
    (copied / "production" / "secrets" / "api_key.txt").write_text("k-" + os.urandom(8).hex())
    found = {}
    for overlay in ("base", "production"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(copied / overlay)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        path = copied.parent / f"{overlay}.yaml"
        path.write_text(out)
        found[overlay] = Rendered(path, [d for d in yaml.safe_load_all(out) if d])
    return found


def _kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in documents if d["kind"] == kind]
    assert len(matches) == 1, f"{len(matches)} {kind}"
    return matches[0]


def _container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(containers[0])


def differences(compose: dict[str, Any], documents: list[dict[str, Any]]) -> list[str]:
    """Where the manifests' model server is not the production compose one, or breaks a
    rule of its own (threads over the CPU limit, a grace shorter than the drain)."""
    ours = compose["services"]["ml-api"]
    deployment = _kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(documents)
    found = []

    def same(what: str, left: object, right: object) -> None:
        if left != right:
            found.append(f"{what}: compose {left!r}, kubernetes {right!r}")

    same("image", ours["image"].split(":")[0], container["image"].split(":")[0].split("/")[-1])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    same(
        "environment",
        dict(ours["environment"]),
        {k: v for k, v in env.items() if k not in K8S_ONLY_ENV},
    )
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    compose_limits = ours["deploy"]["resources"]["limits"]
    compose_reserved = ours["deploy"]["resources"]["reservations"]
    same("cpu limit", _cpus(compose_limits["cpus"]), _cpus(limits.get("cpu", "0")))
    same("memory limit", _bytes(compose_limits["memory"]), _bytes(limits.get("memory", "0")))
    same("cpu request", _cpus(compose_reserved["cpus"]), _cpus(requests.get("cpu", "0")))
    same("memory request", _bytes(compose_reserved["memory"]), _bytes(requests.get("memory", "0")))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "WORKERS"):
        if float(env.get(name) or 0) > _cpus(limits.get("cpu", "0")):
            found.append(f"{name}={env.get(name)} over the CPU limit {limits.get('cpu')}")
    same("replicas", int(ours["deploy"]["replicas"]), deployment["spec"]["replicas"])

    # probes: readiness is compose's health check (`mlapi healthcheck` reads /health)
    check = ours["healthcheck"]
    assert check["test"] == ["CMD", "mlapi", "healthcheck"], check["test"]
    ready = container.get("readinessProbe", {})
    same("readiness path", "/health", ready.get("httpGet", {}).get("path"))
    same("readiness period", _seconds(check["interval"]), ready.get("periodSeconds"))
    same("readiness timeout", _seconds(check["timeout"]), ready.get("timeoutSeconds"))
    same("readiness failures", check["retries"], ready.get("failureThreshold"))
    live = container.get("livenessProbe", {})
    same("liveness path", "/health/live", live.get("httpGet", {}).get("path"))
    startup = container.get("startupProbe", {})
    same("startup probe", {"port": 8001}, startup.get("grpc"))  # gRPC health: "" = all ready
    budget = _seconds(check["start_period"]) + _seconds(check["interval"]) * check["retries"]
    same(
        "startup budget (s)",
        budget,
        startup.get("periodSeconds", 0) * startup.get("failureThreshold", 0),
    )
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    same(
        "ports",
        {"http": int(env.get("API_PORT") or 0), "grpc": int(env.get("API_GRPC_PORT") or 0)},
        ports,
    )

    # stopping: compose's grace, longer than the preStop pause and the drain
    grace = pod.get("terminationGracePeriodSeconds", 30)
    same("grace", _seconds(ours["stop_grace_period"]), grace)
    pause = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if pause[:1] != ["sleep"] or not pause[1:]:
        found.append(f"preStop is not a pause: {pause!r}")
    else:
        drain = float(pause[1]) + float(env.get("MLAPI_SHUTDOWN_TIMEOUT_S") or 0)
        if grace <= drain:
            found.append(f"grace {grace} s not longer than the drain {drain} s")

    # the user and the hardening
    user, group = (int(x) for x in ours["user"].split(":"))
    context = pod.get("securityContext", {})
    same("user", (user, group), (context.get("runAsUser"), context.get("runAsGroup")))
    same("non-root", True, context.get("runAsNonRoot"))
    hardening = container.get("securityContext", {})
    same("read-only root", ours["read_only"], hardening.get("readOnlyRootFilesystem"))
    same("capabilities dropped", ours["cap_drop"], hardening.get("capabilities", {}).get("drop"))
    same("no privilege escalation", False, hardening.get("allowPrivilegeEscalation"))

    # volumes: compose's targets, /tmp as its tmpfs, the key where API_KEY_FILE says
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    compose_targets = {v.split(":")[1] for v in ours["volumes"] if isinstance(v, str)}
    same("volume targets", compose_targets, set(mounts) - {"/tmp", "/run/secrets"})
    tmpfs = dict(item.split(":") for item in ours["tmpfs"])
    size = dict(o.split("=") for o in tmpfs["/tmp"].split(","))["size"]
    tmp = volumes.get(mounts.get("/tmp", ""), {}).get("emptyDir", {})
    same("/tmp", ("Memory", _bytes(size)), (tmp.get("medium"), _bytes(tmp.get("sizeLimit", "0"))))
    targets = [s if isinstance(s, str) else s["target"] for s in ours["secrets"]]
    secret = volumes.get(mounts.get("/run/secrets", ""), {}).get("secret", {})
    same("secret files", targets, [i["path"] for i in secret.get("items", [])])
    same("key file", env.get("API_KEY_FILE"), f"/run/secrets/{targets[0]}")
    return found


def test_the_manifests_are_the_compose_deployment(rendered: dict[str, Rendered]) -> None:
    compose = merged(PROD, {})
    for overlay in ("base", "production"):
        assert differences(compose, rendered[overlay].documents) == [], overlay


BREAKAGES = {
    "a probe's path": lambda c: c["readinessProbe"]["httpGet"].update(path="/healthz"),
    "the liveness probe on readiness": lambda c: c["livenessProbe"]["httpGet"].update(
        path="/health"
    ),
    "a missing memory limit": lambda c: c["resources"]["limits"].pop("memory"),
    "threads over the CPU limit": lambda c: c["resources"]["limits"].update(cpu="1"),
    "a startup budget under compose's": lambda c: c["startupProbe"].update(failureThreshold=5),
    "the key elsewhere": lambda c: c["volumeMounts"][-1].update(mountPath="/etc/key"),
    "a writable root": lambda c: c["securityContext"].update(readOnlyRootFilesystem=False),
    "an environment default changed": lambda c: next(
        e for e in c["env"] if e["name"] == "API_HOST"
    ).update(value="127.0.0.1"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_manifest_is_found(rendered: dict[str, Rendered], breakage: str) -> None:
    documents = copy.deepcopy(rendered["production"].documents)
    deployment = _kind(documents, "Deployment")
    BREAKAGES[breakage](deployment["spec"]["template"]["spec"]["containers"][0])
    assert differences(merged(PROD, {}), documents) != []


def test_a_grace_shorter_than_the_drain_is_found(rendered: dict[str, Rendered]) -> None:
    documents = copy.deepcopy(rendered["production"].documents)
    _kind(documents, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 25
    compose = merged(PROD, {})
    compose["services"]["ml-api"]["stop_grace_period"] = "25s"  # the same grace in both
    assert any("not longer than the drain" in d for d in differences(compose, documents))


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_the_manifests_pass_the_kubernetes_schemas(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    done = subprocess.run(
        [
            _tool("kubernetes-validate"),
            "-k",
            KUBERNETES,
            "--strict",
            "--quiet",
            str(rendered[overlay].path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in rendered[overlay].documents}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget"} <= kinds
    assert {"HorizontalPodAutoscaler", "NetworkPolicy", "ServiceAccount"} <= kinds


def test_a_schema_error_fails_validation(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """The validator does read the manifests: a misspelt field fails it."""
    documents = copy.deepcopy(rendered["production"].documents)
    _kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "readinesProbe"
    ] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    done = subprocess.run(
        [_tool("kubernetes-validate"), "-k", KUBERNETES, "--strict", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


def _checkov(path: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            _tool("checkov"),
            "-f",
            path,
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": ""},
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    result = json.loads(done.stdout)
    return result[0] if isinstance(result, list) else result


def test_checkov_finds_nothing_but_the_accepted(rendered: dict[str, Rendered]) -> None:
    report = _checkov(str(rendered["production"].path))
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert failed == ACCEPTED_CHECKS, sorted(failed)
    assert report["summary"]["passed"] >= 80  # the kubernetes checks did run


def test_checkov_finds_a_weakened_pod(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    documents = copy.deepcopy(rendered["production"].documents)
    container = _container(documents)
    container["securityContext"]["allowPrivilegeEscalation"] = True
    container["resources"].pop("limits")
    _kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"] = [container]
    path = tmp_path / "weak.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    failed = {c["check_id"] for c in _checkov(str(path))["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_11", "CKV_K8S_13"} <= failed, sorted(failed)
