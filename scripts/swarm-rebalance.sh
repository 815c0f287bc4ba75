#!/usr/bin/env bash
# Spreads a Swarm service's replicas evenly over the nodes again, when they are not.
#
#   scripts/swarm-rebalance.sh [SERVICE]      (default: mlapi_ml-api)
#
# Why: Swarm never moves a running task, so a node that comes back (after a drain or a
# loss) stays empty until tasks are replaced. A rolling update replaces them, but with
# `order: start-first` (the stack's, for zero downtime) the old task still counts on
# its node while its replacement is placed: with two replicas over two nodes the last
# replacement meets a tie, which Swarm's scheduler breaks at random, so both replicas
# can land on the node that came back (seen in tests/e2e/test_swarm_nodes.py).
#
# How: one replica more, then back to the count. The extra one goes to the node with
# the fewest; scaling down removes from the nodes with the most copies first (swarmkit's
# replicated orchestrator), so the result is even. Both steps are graceful: the new
# replica serves once healthy, the removed one drains (stop_grace_period) after it
# leaves the proxies' DNS. Nothing is done when the spread is already even (no node
# with two more than another). An update that still runs (its monitor period goes on
# after `docker service update` returns) is waited for, at most MLAPI_REBALANCE_WAIT_S
# (300); a paused one is refused (exit 2).
#
# Every node that is ready and active counts: the stack places ml-api without
# constraints. A service with placement constraints is refused (exit 2): which nodes
# may run it is then not this script's to judge.
set -euo pipefail

SERVICE=${1:-mlapi_ml-api}

say() { echo "swarm-rebalance: $*" >&2; }

# "NODE_ID COUNT" per ready, active node, from the service's running tasks
spread() {
    local ids tasks nodes running=""
    mapfile -t ids < <(docker node ls -q)
    nodes=$(docker node inspect -f '{{.ID}} {{.Status.State}} {{.Spec.Availability}}' "${ids[@]}" |
        awk '$2 == "ready" && $3 == "active" {print $1}')
    mapfile -t tasks < <(docker service ps -q --filter desired-state=running "$SERVICE")
    if ((${#tasks[@]})); then
        running=$(docker inspect -f '{{.NodeID}} {{.Status.State}}' "${tasks[@]}" |
            awk '$2 == "running" {print $1}')
    fi
    for node in $nodes; do
        echo "$node $(grep -c "^$node\$" <<<"$running" || true)"
    done
}

# "node:count ...", node IDs shortened
show() { spread | awk '{printf "%s%s:%s", sep, substr($1, 1, 6), $2; sep = " "}'; }

uneven() { spread | awk 'NR == 1 || $2 > max {max = $2} NR == 1 || $2 < min {min = $2} END {exit !(max - min > 1)}'; }

docker service inspect "$SERVICE" >/dev/null 2>&1 || { say "no service '$SERVICE'"; exit 2; }
mode=$(docker service inspect -f '{{if .Spec.Mode.Replicated}}replicated{{end}}' "$SERVICE")
[ "$mode" = replicated ] || { say "'$SERVICE' is not a replicated service"; exit 2; }
constraints=$(docker service inspect -f '{{with .Spec.TaskTemplate.Placement}}{{len .Constraints}}{{else}}0{{end}}' "$SERVICE")
[ "${constraints:-0}" = 0 ] || { say "'$SERVICE' has placement constraints: rebalance it by hand"; exit 2; }
# an update runs on after `docker service update` returns, for its monitor period: it
# is waited for (at most MLAPI_REBALANCE_WAIT_S); a paused one is left to the operator
update_state() { docker service inspect -f '{{with .UpdateStatus}}{{.State}}{{end}}' "$SERVICE"; }
deadline=$((SECONDS + ${MLAPI_REBALANCE_WAIT_S:-300}))
while :; do
    state=$(update_state)
    case "$state" in
        updating | rollback_started)
            if ((SECONDS >= deadline)); then
                say "'$SERVICE' is still being updated ($state): run this after the update"
                exit 2
            fi
            sleep 2
            ;;
        paused | rollback_paused)
            say "'$SERVICE''s update is $state: resume or roll it back first"
            exit 2
            ;;
        *) break ;;
    esac
done

if ! uneven; then
    say "'$SERVICE' is spread already: $(show)"
    exit 0
fi
replicas=$(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' "$SERVICE")
say "'$SERVICE' is uneven: $(show); $((replicas + 1)) replicas, then $replicas"
docker service scale --detach=false "$SERVICE=$((replicas + 1))" >/dev/null
docker service scale --detach=false "$SERVICE=$replicas" >/dev/null
if uneven; then
    say "still uneven: $(show)"
    exit 1
fi
say "spread: $(show)"
