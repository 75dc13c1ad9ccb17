#!/usr/bin/env bash
# The deployment, run for real on a machine with a Docker engine, offline if need be; prints a figures
# table (also written to $SMOKE_OUT/figures.md). docs/deploying.md, "The smoke run", has the last one.
#
#   docker/smoke.sh                 # quick demo models (TRAIN_ARGS=--quick); FULL=1 for the full ones
#
# 1. build the CPU image (deepserve:cpu) and its `build` stage; sizes and build time
# 2. docker run it: seconds to ready and to Docker's `healthy`; a v2 infer and a /v1 predict per model;
#    RSS inside the container; SIGTERM during requests: every accepted request completes, exit code 0
# 3. docker-compose.yml: `up --scale api=3` behind the load balancer; requests spread over the replicas
#    (each replica's /metrics); under wrk, `docker kill` one replica: failed requests counted;
#    an image change rolled out with docker/rolling-restart.sh under wrk: failed requests counted
# 4. the monitoring profile: Prometheus scrapes every replica (Grafana where its image exists)
#
# Offline: with no registry, PYTHON_IMAGE defaults to a Debian base made by docker/base.sh (root,
# debootstrap, a Debian mirror) and the nginx / Prometheus images to stand-ins built from Debian
# packages (docker/standins/). pip installs from docker/wheelhouse/ when it holds wheels
# (docker/wheelhouse.sh). Everything listens on 127.0.0.1 only: SMOKE_PORT (18000) for the single
# container, +80 for the load balancer, +90 for Prometheus. KEEP=1 leaves the containers running;
# SMOKE_BUILD=0 runs the images already built (deepserve:cpu, deepserve:cpu-build) instead of building.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${SMOKE_OUT:-/tmp/deepserve-smoke}"
PORT="${SMOKE_PORT:-18000}"
TRAIN_ARGS="${TRAIN_ARGS-$([[ "${FULL:-0}" == 1 ]] && echo "" || echo --quick)}"
WRK_SECONDS="${WRK_SECONDS:-40}"
# wrk's load: 4 connections keep every replica busy without starving Docker's healthchecks on a small
# machine (at 16 on 2 shared cores, `python -c` healthchecks passed their 5 s timeout: all unhealthy).
WRK_CONNECTIONS="${WRK_CONNECTIONS:-4}"
PY="${PYTHON:-python3}"
CLIENT=("$PY" "$ROOT/docker/smoke_client.py")
RUN_NAME=deepserve-smoke-run
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-deepserve}"
mkdir -p "$OUT"
: >"$OUT/figures.md"
failures=0

say() { printf '\n== %s\n' "$*" >&2; }
figure() { printf '| %s | %s |\n' "$1" "$2" | tee -a "$OUT/figures.md"; }
check() {  # check NAME CONDITION-COMMAND...: a figure row `pass`/`FAIL`, counted
    local name="$1"; shift
    if "$@"; then figure "$name" pass; else figure "$name" FAIL; failures=$((failures + 1)); fi
}
mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}'; }
have_image() {  # present, or pulled within 20 s (SMOKE_PULL=0: never try)
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    [[ "${SMOKE_PULL:-1}" == 1 ]] && timeout 20 docker pull -q "$1" >/dev/null 2>&1
}

command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "smoke: no Docker engine reachable" >&2; exit 2; }
command -v wrk >/dev/null || { echo "smoke: wrk not installed (apt-get install wrk)" >&2; exit 2; }
if [[ -n "${COMPOSE:-}" ]]; then
    read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
export COMPOSE="${compose[*]}"

cleanup() {
    [[ "${KEEP:-0}" == 1 ]] && return
    docker rm -f "$RUN_NAME" >/dev/null 2>&1 || true
    "${compose[@]}" --profile monitoring down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

# ---- 1. images ---------------------------------------------------------------------------------------
say "base images"
if [[ -z "${PYTHON_IMAGE:-}" ]]; then
    if have_image python:3.11-slim-bookworm; then
        PYTHON_IMAGE=python:3.11-slim-bookworm
    else
        PYTHON_IMAGE=deepserve-base/python:3.11-bookworm
        docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 || "$ROOT/docker/base.sh" "$PYTHON_IMAGE"
    fi
fi
export PYTHON_IMAGE TRAIN_ARGS
wheels="$(find docker/wheelhouse -name '*.whl' | wc -l)"
echo "| figure | value |" | tee -a "$OUT/figures.md"
echo "| --- | --- |" | tee -a "$OUT/figures.md"
figure "base image (PYTHON_IMAGE)" "$PYTHON_IMAGE, $(mb "$PYTHON_IMAGE")"
figure "pip source" "$([[ $wheels -gt 0 ]] && echo "docker/wheelhouse ($wheels wheels, --no-index)" || echo "PyPI + PyTorch CPU index")"
figure "compose" "$("${compose[@]}" version --short 2>/dev/null || "${compose[@]}" version | head -n 1)"

if [[ "${SMOKE_BUILD:-1}" == 1 ]]; then
    say "docker build (TRAIN_ARGS=$TRAIN_ARGS)"
    start=$(date +%s)
    nice -n 10 docker build -f docker/Dockerfile --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
        --build-arg TRAIN_ARGS="$TRAIN_ARGS" -t deepserve:cpu . >"$OUT/build.log" 2>&1 \
        || { tail -n 30 "$OUT/build.log" >&2; echo "smoke: build failed, log in $OUT/build.log" >&2; exit 1; }
    figure "build time (layers cached where unchanged)" "$(( $(date +%s) - start )) s"
    nice -n 10 docker build -f docker/Dockerfile --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
        --build-arg TRAIN_ARGS="$TRAIN_ARGS" --target build -t deepserve:cpu-build . >>"$OUT/build.log" 2>&1
else  # SMOKE_BUILD=0: the images built before (deepserve:cpu, and its build stage tagged deepserve:cpu-build)
    figure "build" "SMOKE_BUILD=0: deepserve:cpu $(docker image inspect -f '{{.Created}}' deepserve:cpu | cut -c1-19)"
fi
figure "image size: runtime stage (deepserve:cpu)" "$(mb deepserve:cpu)"
figure "image size: build stage" "$(mb deepserve:cpu-build)"
runtime_mb="$(docker image inspect -f '{{.Size}}' deepserve:cpu)"
check "runtime image <= 450 MB" test "$runtime_mb" -le 450000000

# ---- 2. one container --------------------------------------------------------------------------------
say "docker run"
start_ns=$(date +%s%N)
docker run -d --name "$RUN_NAME" -p "127.0.0.1:$PORT:8000" --stop-timeout 40 deepserve:cpu >/dev/null
ip="$(ip_of "$RUN_NAME")"
"${CLIENT[@]}" ready "http://$ip:8000" "$RUN_NAME" | tee "$OUT/ready.txt" \
    || { docker logs --tail 30 "$RUN_NAME" >&2; echo "smoke: the container did not get ready" >&2; exit 1; }
until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$RUN_NAME")" =~ ^(healthy|unhealthy)$ ]]; do sleep 0.2; done
figure "docker run -> ready (/v2/health/ready 200)" "$(sed -n 's/ready_s=//p' "$OUT/ready.txt") s"
figure "docker run -> healthy (HEALTHCHECK, 10 s interval)" \
    "$(awk -v a="$start_ns" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f s", (b - a) / 1e9}')"
check "health status healthy" test "$(docker inspect -f '{{.State.Health.Status}}' "$RUN_NAME")" = healthy

say "a v2 infer and a /v1 predict per model (through the published port)"
check "v2 infer + /v1 predict, every model" "${CLIENT[@]}" models "http://127.0.0.1:$PORT"
rss_kb="$(docker exec "$RUN_NAME" sed -n 's/^VmRSS:[[:space:]]*//p' /proc/1/status | awk '{print $1}')"
figure "RSS of the server (PID 1) after those requests" "$((rss_kb / 1024)) MiB"
figure "container memory (docker stats)" "$(docker stats --no-stream --format '{{.MemUsage}}' "$RUN_NAME")"

say "SIGTERM during requests (straight to the container's address: no docker-proxy in between)"
"${CLIENT[@]}" inflight "http://$ip:8000" -- docker kill --signal TERM "$RUN_NAME" | tee "$OUT/sigterm.txt" \
    && sigterm_ok=1 || sigterm_ok=0
exit_code="$(docker wait "$RUN_NAME")"
figure "SIGTERM: in flight / completed / lost; reset before read (an LB retries those)" \
    "$(sed -n -E 's/.*sigterm_in_flight=([0-9]+) sigterm_in_flight_completed=([0-9]+) sigterm_lost=([0-9]+) sigterm_unread=([0-9]+).*/\1 \/ \2 \/ \3; \4/p' "$OUT/sigterm.txt")"
check "SIGTERM: all accepted requests completed" test "$sigterm_ok" = 1
figure "exit code after SIGTERM" "$exit_code"
check "exit code 0" test "$exit_code" = 0
docker rm "$RUN_NAME" >/dev/null

# ---- 3. compose: three replicas behind the load balancer ---------------------------------------------
say "compose up --scale api=3"
export DEEPSERVE_LB_PUBLISH="127.0.0.1:$((PORT + 80))" DEEPSERVE_PROMETHEUS_PUBLISH="127.0.0.1:$((PORT + 90))"
if [[ -z "${DEEPSERVE_LB_IMAGE:-}" ]] && ! have_image nginx:1.28-alpine; then
    DEEPSERVE_LB_IMAGE=deepserve-standin/nginx:1.22
    docker build --build-arg BASE_IMAGE="$PYTHON_IMAGE" -t "$DEEPSERVE_LB_IMAGE" docker/standins/nginx >>"$OUT/build.log"
fi
export DEEPSERVE_LB_IMAGE="${DEEPSERVE_LB_IMAGE:-nginx:1.28-alpine}"
figure "load balancer image" "$DEEPSERVE_LB_IMAGE"
lb="http://127.0.0.1:$((PORT + 80))"
"${compose[@]}" up -d --no-build --scale api=3 api lb >"$OUT/compose.log" 2>&1 || { cat "$OUT/compose.log" >&2; exit 1; }
replicas() { docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter label=com.docker.compose.service=api; }
replica_urls() { for id in $(replicas); do echo "http://$(ip_of "$id"):8000"; done; }
"${CLIENT[@]}" ready "$lb" >/dev/null
mapfile -t urls < <(replica_urls)
"${CLIENT[@]}" counts "${urls[@]}" | sort >"$OUT/counts-before.txt"
for _ in $(seq 20); do "${CLIENT[@]}" models "$lb" >/dev/null; done  # 8 inferences each
"${CLIENT[@]}" counts "${urls[@]}" | sort >"$OUT/counts-after.txt"
join "$OUT/counts-before.txt" "$OUT/counts-after.txt" | awk '{print $3 - $2}' >"$OUT/spread.txt"
figure "20 rounds of (v2 infer + /v1 predict) x 4 models via the LB: deepserve_requests_total per replica" \
    "$(paste -sd/ "$OUT/spread.txt")"
check "3 replicas, every one served some" awk 'NF && $1 > 0 {n++} END {exit n != 3}' "$OUT/spread.txt"
check "repository API not served through the LB (404)" \
    test "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$lb/v2/repository/index")" = 404

# wrk through the LB; `docker kill` one replica a third of the way in.
load() {  # load NAME SECONDS: wrk in the background, output in $OUT/wrk-NAME.txt; SIGINT ends it early
    wrk -t1 -c"$WRK_CONNECTIONS" -d"$2s" --timeout 10s -s docker/smoke_wrk.lua "$lb/v2/models/cnn/infer" \
        >"$OUT/wrk-$1.txt" 2>&1 &
    wrk_pid=$!
}
errors_of() { sed -n -E 's/^wrk_requests=([0-9]+) wrk_non2xx=([0-9]+) wrk_socket_errors=([0-9]+)/\1 \2 \3/p' "$OUT/wrk-$1.txt"; }

say "wrk through the LB; docker kill one replica"
load failover "$WRK_SECONDS"
sleep $((WRK_SECONDS / 3))
victim="$(replicas | head -n 1)"
killed_at=$(date +%s)
docker kill "$victim" >/dev/null
wait "$wrk_pid"
read -r total non2xx socket <<<"$(errors_of failover)"
late="$(awk -v k="$killed_at" -F'[= ]' '/^non200_at=/ && $2 > k + 2 {n += $4} END {print n + 0}' "$OUT/wrk-failover.txt")"
figure "failover: requests / non-2xx / socket errors" "$total / $non2xx / $socket"
figure "failover: failed share; non-2xx later than 2 s after the kill" \
    "$(awk -v t="$total" -v e="$((non2xx + socket))" 'BEGIN {printf "%.3f %%", 100 * e / t}'); $late"
check "failover: <= 1 % failed, 0 after the LB marked it down" \
    awk -v t="$total" -v e="$((non2xx + socket))" -v l="$late" 'BEGIN {exit !(t > 0 && e <= t / 100 && l == 0)}'
# `docker kill` counts as a manual stop, which restart policies leave alone: start it again, as an
# orchestrator would, and wait for three healthy replicas.
docker start "$victim" >/dev/null
for _ in $(seq 300); do
    [[ "$(for id in $(replicas); do docker inspect -f '{{.State.Health.Status}}' "$id"; done | grep -c healthy)" -ge 3 ]] && break
    sleep 1
done

say "an image change rolled out with docker/rolling-restart.sh under wrk"
printf 'FROM deepserve:cpu\nLABEL org.deepserve.smoke-revision="%s"\n' "$(date +%s)" \
    | docker build -q -t deepserve:cpu - >/dev/null
load rolling 900
sleep 3
start=$(date +%s)
"$ROOT/docker/rolling-restart.sh" api >"$OUT/rolling.log" 2>&1 || { cat "$OUT/rolling.log" >&2; failures=$((failures + 1)); }
rolled_s=$(( $(date +%s) - start ))
sleep 3
kill -INT "$wrk_pid"
wait "$wrk_pid" || true
read -r total non2xx socket <<<"$(errors_of rolling)"
figure "rolling restart of 3 replicas: time" "$rolled_s s (wrk from 3 s before to 3 s after)"
figure "rolling restart: requests / non-2xx / socket errors" "$total / $non2xx / $socket"
check "rolling restart: 0 failed" test "$((non2xx + socket))" = 0
new_image="$(docker image inspect -f '{{.Id}}' deepserve:cpu)"
check "every replica runs the new image" bash -c "for id in \$(docker ps -q --filter label=com.docker.compose.project=$COMPOSE_PROJECT_NAME --filter label=com.docker.compose.service=api); do test \"\$(docker inspect -f '{{.Image}}' \$id)\" = $new_image || exit 1; done"

# ---- 4. monitoring -----------------------------------------------------------------------------------
say "monitoring profile"
if [[ -z "${DEEPSERVE_PROMETHEUS_IMAGE:-}" ]] && ! have_image prom/prometheus:v3.5.0; then
    DEEPSERVE_PROMETHEUS_IMAGE=deepserve-standin/prometheus:2.42
    docker build --build-arg BASE_IMAGE="$PYTHON_IMAGE" -t "$DEEPSERVE_PROMETHEUS_IMAGE" docker/standins/prometheus \
        >>"$OUT/build.log"
fi
export DEEPSERVE_PROMETHEUS_IMAGE="${DEEPSERVE_PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}"
figure "Prometheus image" "$DEEPSERVE_PROMETHEUS_IMAGE"
"${compose[@]}" --profile monitoring up -d --no-deps prometheus >>"$OUT/compose.log" 2>&1
check "Prometheus scrapes every replica (3 targets up)" \
    "${CLIENT[@]}" prometheus "http://127.0.0.1:$((PORT + 90))" 3
if have_image grafana/grafana:12.1.0; then
    "${compose[@]}" --profile monitoring up -d --no-deps grafana >>"$OUT/compose.log" 2>&1
    figure "Grafana" "started (grafana/grafana:12.1.0)"
else
    figure "Grafana" "SKIPPED: grafana/grafana:12.1.0 cannot be pulled and Debian has no grafana package"
fi

say "figures (also in $OUT/figures.md)"
cat "$OUT/figures.md"
echo "smoke: $failures failed check(s)"
exit $((failures > 0))
