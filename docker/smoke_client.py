"""HTTP side of docker/smoke.sh: requests to real containers, standard library only (runs with any python3).

Subcommands (each prints `key=value` lines that smoke.sh puts in its figures table, and exits 1 on a
failed check):
  ready URL [CONTAINER]     seconds until URL/v2/health/ready answers 200 (fails once CONTAINER stops)
  models URL                for every model: a v2 infer (zeros shaped from its metadata) and a /v1 predict
                            (the example body /v1/models/{name} publishes); both must answer 200
  inflight URL -- CMD...    clients in a loop of slow v2 infers; once all have had an answer, run CMD
                            (it sends SIGTERM); every request the server accepted must complete with 200
  counts URL...             deepserve_requests_total summed per replica (their /metrics), one line each
  prometheus URL N          wait until Prometheus reports N `deepserve` targets up
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 60.0


def emit(line: str) -> None:
    """One `key=value` line for smoke.sh."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def v2_request(metadata: dict[str, Any], seconds: float = 1.0) -> dict[str, Any]:
    """Zeros (ones for integer ids) for every input: batch 1, a dynamic float axis `seconds` of 16 kHz
    audio, a dynamic integer axis 8 tokens; a 1-d integer input (a lengths vector) gets that length."""
    samples = int(16000 * seconds)
    inputs = []
    for spec in metadata["inputs"]:
        integer = spec["datatype"].startswith(("INT", "UINT"))
        shape = [1] + [d if d > 0 else (8 if integer else samples) for d in spec["shape"][1:]]
        size = 1
        for d in shape:
            size *= d
        value: float = (samples if len(shape) == 1 else 1) if integer else 0.0
        inputs.append(
            {"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": [value] * size}
        )
    return {"inputs": inputs}


def running(container: str) -> bool:
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True,
                           text=True, timeout=60, check=False)
    return state.stdout.strip() == "true"


def ready(url: str, container: str | None = None) -> int:
    """Poll readiness; with a container name, give up as soon as that container is no longer running."""
    start = time.monotonic()
    while time.monotonic() - start < 600:
        if container and not running(container):
            emit(f"ready_s=exited ({container} stopped; docker logs {container})")
            return 1
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    emit(f"ready_s={time.monotonic() - start:.1f}")
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    emit("ready_s=timeout")
    return 1


def models(url: str) -> int:
    failed = 0
    for model in get(f"{url}/v1/models")["models"]:
        name = model["name"]
        metadata = get(f"{url}/v2/models/{name}")
        status, body = post(f"{url}/v2/models/{name}/infer", v2_request(metadata))
        shapes = [o["shape"] for o in body["outputs"]] if status == 200 else body
        emit(f"v2_infer_{name}={status} outputs={shapes}")
        summary = get(f"{url}/v1/models/{name}")
        status_v1, answer = post(f"{url}/v1/models/{name}/predict", summary["example_json"])
        emit(f"v1_predict_{name}={status_v1} {json.dumps(answer)[:120]}")
        failed += status != 200 or status_v1 != 200
    return 1 if failed else 0


def not_accepted(reason: object) -> bool:
    """The connection was never made: the listener is closed, or the container (its address) is gone."""
    return isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) in (
        errno.EHOSTUNREACH, errno.ENETUNREACH)


def inflight(url: str, command: list[str], clients: int = 8, model: str = "speech") -> int:
    """Every request the server accepted before or after SIGTERM completes with 200.

    Not losses, counted apart: a refused connection (the listener is closed) and `unread`, a connection
    reset while the request was still being sent (at shutdown the server closes connections whose
    request it has not read yet); a load balancer retries both on another replica. Anything else once
    the request was sent (reset, empty reply, 5xx) is a loss.
    """
    body = v2_request(get(f"{url}/v2/models/{model}"), seconds=10.0)
    data = json.dumps(body).encode()
    lock = threading.Lock()
    answered = threading.Barrier(clients + 1)
    records: list[tuple[float, float, str]] = []  # (start, end, outcome)

    def client() -> None:
        first = True
        while True:
            start = time.monotonic()
            request = urllib.request.Request(f"{url}/v2/models/{model}/infer", data,
                                             {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    response.read()
                    outcome = str(response.status)
            except urllib.error.HTTPError as exc:
                outcome = str(exc.code)
            # connect or send failed, so the server never read the request
            except urllib.error.URLError as exc:
                if not_accepted(exc.reason):
                    outcome = "refused"
                elif isinstance(exc.reason, (ConnectionResetError, BrokenPipeError)):
                    outcome = "unread"
                else:
                    outcome = f"error:{exc.reason}"
            except OSError as exc:
                outcome = f"error:{type(exc).__name__}"
            with lock:
                records.append((start, time.monotonic(), outcome))
            if first:
                first = False
                answered.wait()
            if outcome == "refused":
                return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    answered.wait()
    signalled = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    for thread in threads:
        thread.join(timeout=120)
    during = [r for r in records if r[0] < signalled < r[1] and r[2] != "unread"]
    completed = sum(r[2] == "200" for r in during)
    unread = sum(r[2] == "unread" for r in records)
    lost = [r[2] for r in records if r[2] not in ("200", "refused", "unread")]
    emit(f"sigterm_in_flight={len(during)} sigterm_in_flight_completed={completed} "
         f"sigterm_lost={len(lost)} sigterm_unread={unread} requests={len(records)}")
    if lost:
        emit(f"lost outcomes: {sorted(set(lost))}")
    return 0 if during and completed == len(during) and not lost else 1


def counts(urls: list[str]) -> int:
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=TIMEOUT_S) as response:
            text = response.read().decode()
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("deepserve_requests_total{"))
        emit(f"{url} {int(total)}")
    return 0


def prometheus(url: str, expected: int) -> int:
    deadline = time.monotonic() + 120
    up = 0
    while time.monotonic() < deadline:
        targets = get(f"{url}/api/v1/targets")["data"]["activeTargets"]
        up = sum(t["labels"]["job"] == "deepserve" and t["health"] == "up" for t in targets)
        if up >= expected:
            break
        time.sleep(2)
    emit(f"prometheus_targets_up={up} expected={expected}")
    return 0 if up >= expected else 1


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "ready":
        return ready(args[0], args[1] if len(args) > 1 else None)
    if command == "models":
        return models(args[0])
    if command == "inflight":
        return inflight(args[0], args[args.index("--") + 1:])
    if command == "counts":
        return counts(args)
    if command == "prometheus":
        return prometheus(args[0], int(args[1]))
    raise SystemExit(f"unknown subcommand {command!r}; see the module docstring")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
