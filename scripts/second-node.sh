#!/usr/bin/env bash
# A second Docker engine on this machine that is a second Swarm node as another host
# would be: a network namespace of its own joined to the host by a veth pair
# (198.51.100.1/30 on the host's side, .2 on the node's, a documentation range this
# machine does not use), so it has its own address and its own VXLAN endpoint. The
# e2e tier's two-node scenarios (tests/e2e/test_swarm_nodes.py) start and remove it.
#
#   scripts/second-node.sh start            namespace, link and engine (no swarm yet)
#   scripts/second-node.sh join TOKEN       joins the swarm of the host's engine
#   scripts/second-node.sh load IMAGE...    copies images into it (no registry here)
#   scripts/second-node.sh kill             the node lost: its engine, containerd,
#                                           shims and containers killed at once (-9)
#   scripts/second-node.sh restart          its engine again (after kill), same state
#   scripts/second-node.sh stop             leaves the swarm; removes all of it
#   scripts/second-node.sh docker ARGS...   the docker CLI against it
#
# The engine runs under `nsenter --net=`, not `ip netns exec`: the latter remounts
# /sys and hides the cgroup mounts ("Devices cgroup isn't mounted").
set -euo pipefail

NAME=${MLAPI_NODE2:-mlapi-node2}
NS=$NAME
HOST_END=${NAME:0:10}h
NODE_END=${NAME:0:10}n
HOST_ADDR=198.51.100.1
NODE_ADDR=198.51.100.2
ROOT=/var/lib/$NAME
RUN=/run/$NAME
SOCK=unix://$RUN/docker.sock
PIDFILE=$RUN/dockerd.pid
LOG=/tmp/$NAME-dockerd.log
# the node's bridge, away from the host's docker0 (172.17/16) and the pools' ranges
BIP=172.31.250.1/24

say() { echo "second-node: $*" >&2; }
node() { docker -H "$SOCK" "$@"; }

engine_up() {
    mkdir -p "$ROOT" "$RUN"
    nsenter --net="/run/netns/$NS" dockerd \
        --data-root "$ROOT" --exec-root "$RUN/exec" --pidfile "$PIDFILE" \
        -H "$SOCK" --bip "$BIP" >>"$LOG" 2>&1 &
    for _ in $(seq 1 120); do
        if node info >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    say "its engine did not start: $LOG"; tail -20 "$LOG" >&2; return 1
}

# Every process of the node: its engine, the containerd it started, the shims and
# the containers' processes (found before the engine goes).
node_pids() {
    local pids=()
    [ -f "$PIDFILE" ] && pids+=("$(cat "$PIDFILE")")
    if [ -f "$PIDFILE" ] && node info >/dev/null 2>&1; then
        for id in $(node ps -q); do
            pids+=("$(node inspect -f '{{.State.Pid}}' "$id")")
        done
    fi
    # containerd and its shims name the node's exec root on their command line
    pids+=($(pgrep -f -- "$RUN/exec" || true))
    echo "${pids[@]}"
}

case ${1:-} in
start)
    if ip netns list | grep -qw "$NS"; then say "$NS exists already: stop it first"; exit 1; fi
    if ip -4 -o addr | grep -q "198\.51\.100\."; then say "198.51.100.0/30 is in use"; exit 1; fi
    ip netns add "$NS"
    ip link add "$HOST_END" type veth peer name "$NODE_END"
    ip link set "$NODE_END" netns "$NS"
    ip addr add "$HOST_ADDR/30" dev "$HOST_END"
    ip link set "$HOST_END" up
    nsenter --net="/run/netns/$NS" ip addr add "$NODE_ADDR/30" dev "$NODE_END"
    nsenter --net="/run/netns/$NS" ip link set "$NODE_END" up
    nsenter --net="/run/netns/$NS" ip link set lo up
    nsenter --net="/run/netns/$NS" ip route add default via "$HOST_ADDR"
    : >"$LOG"
    engine_up
    say "up: $NODE_ADDR, $SOCK"
    ;;
join)
    node swarm join --token "$2" --advertise-addr "$NODE_ADDR" "$HOST_ADDR:2377" >/dev/null
    node info --format '{{.Swarm.NodeID}}'
    ;;
load)
    shift
    docker save "$@" | node load -q >/dev/null
    ;;
kill)
    pids=$(node_pids)
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    for _ in $(seq 1 60); do
        alive=0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.5
    done
    rm -f "$PIDFILE"
    ;;
restart)
    # what the killed engine left: its sockets and the containerd socket
    rm -rf "$RUN/exec/containerd" "$RUN/docker.sock" 2>/dev/null || true
    engine_up
    ;;
stop)
    if [ -f "$PIDFILE" ] && node info >/dev/null 2>&1; then
        node swarm leave --force >/dev/null 2>&1 || true
        for id in $(node ps -aq); do node rm -f "$id" >/dev/null 2>&1 || true; done
        kill "$(cat "$PIDFILE")" 2>/dev/null || true
        for _ in $(seq 1 60); do [ -f "$PIDFILE" ] || break; sleep 0.5; done
    fi
    pids=$(node_pids)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    sleep 1
    # what the engine mounted under its roots (overlay layers, netns files, shm)
    { grep -E " ($ROOT|$RUN)[/ ]" /proc/mounts || true; } | awk '{print $2}' | sort -r |
        while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    ip link del "$HOST_END" 2>/dev/null || true
    rm -rf "$ROOT" "$RUN" "$LOG"
    ;;
docker)
    shift
    node "$@"
    ;;
*)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac
