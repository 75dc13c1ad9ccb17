#!/usr/bin/env bash
# Replace every replica of a compose service one at a time, with no request lost: start one more
# replica (from the service's current image), wait until it is ready (Docker's `healthy`, or its own
# /v2/health/ready answering 200: every model loaded), then stop one old replica (SIGTERM: it drains,
# exits 0) and remove it. The load balancer follows Docker's DNS (nginx `resolve`, or the stand-in's
# DNS watch), and retries a refused connection on another replica. `docker compose up -d` alone
# recreates all replicas at once.
#
#   docker/rolling-restart.sh [SERVICE]        # default api; project from COMPOSE_PROJECT_NAME (.env)
#   COMPOSE=docker-compose docker/rolling-restart.sh
set -euo pipefail

SERVICE="${1:-api}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT="${COMPOSE_PROJECT_NAME:-$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$ROOT/.env")}"
if [[ -n "${COMPOSE:-}" ]]; then
    read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
HEALTH_TIMEOUT_S="${HEALTH_TIMEOUT_S:-300}"

replicas() {
    docker ps -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$SERVICE" | sort
}

# Docker's `healthy`, or (READY_HTTP=1, the default; needs curl and a host that reaches container
# addresses, as Linux does) the replica's own /v2/health/ready: on a starved host the exec-based
# healthcheck can pass its 5 s timeout long after the replica is serving.
ready() {
    [[ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" == healthy ]] && return 0
    [[ "${READY_HTTP:-1}" == 1 ]] || return 1
    local address
    address="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}')"
    [[ -n "$address" ]] && curl -fsS -o /dev/null --max-time 4 "http://$address:${DEEPSERVE_PORT:-8000}/v2/health/ready"
}

mapfile -t old < <(replicas)
count="${#old[@]}"
[[ $count -gt 0 ]] || { echo "rolling-restart: no running $SERVICE replica in project $PROJECT" >&2; exit 1; }
for id in "${old[@]}"; do
    before="$(replicas)"
    (cd "$ROOT" && "${compose[@]}" up -d --no-deps --no-recreate --scale "$SERVICE=$((count + 1))" "$SERVICE")
    new="$(comm -13 <(echo "$before") <(replicas) | head -n 1)"
    [[ -n "$new" ]] || { echo "rolling-restart: compose started no new replica" >&2; exit 1; }
    waited=0
    until ready "$new"; do
        if (( waited >= HEALTH_TIMEOUT_S )); then
            echo "rolling-restart: ${new:0:12} not healthy after ${HEALTH_TIMEOUT_S}s; old replicas kept" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "rolling-restart: ${new:0:12} ready after ${waited}s; stopping ${id:0:12}"
    docker stop -t 40 "$id" >/dev/null
    echo "rolling-restart: ${id:0:12} exited $(docker inspect -f '{{.State.ExitCode}}' "$id")"
    docker rm "$id" >/dev/null
done
