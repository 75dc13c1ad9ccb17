"""Start the real server (`python -m service serve`) on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code (kills after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


@contextmanager
def run_server(
    repository: Path,
    *,
    log_dir: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[Server]:
    """Run `python -m service serve` (or `command`) on a free port until the block ends."""
    port = free_port()
    full_env = {**os.environ, "DEEPSERVE_MODEL_REPOSITORY": str(repository), "DEEPSERVE_PORT": str(port),
                "DEEPSERVE_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = list(command) if command else [sys.executable, "-m", "service", "serve", *args]
    log = log_dir / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", port, log)
    try:
        wait_ready(server.url, process)
        yield server
    except BaseException:
        sys.stderr.write(server.output()[-4000:])
        raise
    finally:
        server.terminate()


def metric_samples(url: str, sample: str, **labels: str) -> float:
    """Sum of one sample's values in a server's /metrics whose labels include `labels` (a new connection
    each call: with several worker processes, whichever worker answers)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value for family in text_string_to_metric_families(text) for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def sigterm_during(
    server: Server, request: Callable[[], httpx.Response], *, model: str
) -> tuple[httpx.Response, int]:
    """Send `request()` from a thread, SIGTERM the server once `model` has a request in flight, and
    return the request's response and the server's exit code (for drain-on-shutdown tests)."""
    result: dict[str, httpx.Response | httpx.HTTPError] = {}

    def call() -> None:
        try:
            result["response"] = request()
        except httpx.HTTPError as exc:  # reported by the assertion below
            result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 60
    while metric_samples(server.url, "deepserve_requests_in_flight", model=model) < 1:
        assert caller.is_alive(), f"the {model} request ended before SIGTERM could be sent: {result}"
        assert time.monotonic() < deadline, f"the {model} request never showed as in flight"
        time.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    exit_code = server.process.wait(timeout=90)
    caller.join(timeout=60)
    response = result.get("response")
    assert isinstance(response, httpx.Response), f"in-flight request failed during shutdown: {result!r}"
    return response, exit_code
