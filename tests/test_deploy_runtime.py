"""The deployment files, run for real: on the host, and in Docker where an engine runs.

- The CPU image's command: ENTRYPOINT + CMD and ENV of docker/Dockerfile's runtime stage, run as they
  are (the image's /opt/venv is this venv, except that the image swaps onnxruntime-gpu for the CPU
  wheel of the same version; only the model repository and the port are substituted)
  against a repository of tiny real ONNX models: ready, a correct inference, metrics the dashboard
  reads, and SIGTERM while a request is in flight -> the request completes and the process exits 0.
- The load balancer: Debian's nginx with docker/nginx/host.conf and the compose template rendered for
  two server processes on loopback; requests reach both replicas (their own /metrics counters say
  so), and once one replica is stopped every request still succeeds. Skipped when nginx is not
  installed (`apt-get install nginx`), except under CI (`CI` set), where .ci/setup installs it: fails.
  Through it, the repository API (/v2/repository/...) is a 404, while the replicas themselves serve it.
- The built image (`deepserve:cpu`, or DEEPSERVE_TEST_IMAGE), where a Docker engine answers and the
  image exists: user, ready, the image's own HEALTHCHECK command, a v2 infer and a /v1 predict per
  model, SIGTERM during requests -> every accepted request completes, exit code 0. Skipped, saying why,
  without an engine or the image (docker/smoke.sh builds it and runs compose, failover and restarts).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import OPSET, classifier_model, classifier_weights, write_model
from prometheus_client.parser import text_string_to_metric_families
from server import Server, free_port, metric_samples, run_server, sigterm_during, wait_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGE_VENV = "/opt/venv/bin"  # where the runtime stage's PATH finds `deepserve`
VENV_BIN = str(Path(sys.executable).parent)


# ---- what the image runs -------------------------------------------------------------------------


def runtime_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, args) of the last stage, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")))
    stage: list[tuple[str, str]] = []
    for line in filter(None, (raw.strip() for raw in joined.splitlines())):
        keyword, _, args = line.partition(" ")
        stage = [] if keyword.upper() == "FROM" else [*stage, (keyword.upper(), args.strip())]
    return stage


def image_command(dockerfile: Path) -> tuple[list[str], dict[str, str]]:
    """The runtime stage's exec-form ENTRYPOINT + CMD and its ENV, as `docker run` would use them."""
    stage = runtime_stage(dockerfile)
    entrypoint = [json.loads(args) for kw, args in stage if kw == "ENTRYPOINT"][-1]
    cmd = [json.loads(args) for kw, args in stage if kw == "CMD"][-1]
    env: dict[str, str] = {}
    for args in (args for kw, args in stage if kw == "ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value.replace("$PATH", os.environ["PATH"])
    return [*entrypoint, *cmd], env


def chain_model(width: int = 1024, depth: int = 600) -> tuple[onnx.ModelProto, np.ndarray]:
    """x FP32 [B, width] -> y = tanh(... tanh(x @ W) @ W ...), `depth` times with one shared W.

    Slow (a second or so for 32 rows) yet a 4 MB file: a request stays in flight long enough to
    send SIGTERM during it. Returns the model and W, to compute the expected answer in numpy.
    """
    rng = np.random.default_rng(3)
    w = (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, previous = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes += [
            helper.make_node("MatMul", [previous, "W"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [out]),
        ]
        previous = out
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, w


def v2_request(x: np.ndarray, name: str = "x") -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


def output(body: dict[str, Any], name: str) -> np.ndarray:
    (out,) = [o for o in body["outputs"] if o["name"] == name]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def dashboard_families() -> set[str]:
    """Metric family names the Grafana dashboard queries (suffixes of histograms and counters removed)."""
    dashboard = (DOCKER / "grafana" / "dashboards" / "deepserve.json").read_text()
    names = set(re.findall(r"\bdeepserve_[a-z0-9_]+", dashboard))
    return {re.sub(r"(_bucket|_sum|_count|_total)$", "", n) for n in names}


@contextmanager
def image_process(repo: Path, log_dir: Path) -> Iterator[Server]:
    """Run docker/Dockerfile's command with its ENV (plus HOME/LANG), only repository and port swapped."""
    argv, image_env = image_command(DOCKER / "Dockerfile")
    port = free_port()
    env = {**{k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}, **image_env,
           "DEEPSERVE_MODEL_REPOSITORY": str(repo), "DEEPSERVE_PORT": str(port)}
    env["PATH"] = env["PATH"].replace(IMAGE_VENV, VENV_BIN)
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable and executable.startswith(VENV_BIN), f"{argv[0]} not found in {VENV_BIN}"
    log = log_dir / f"image-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [executable, *argv[1:]], env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=log_dir
        )
    server = Server(process, f"http://127.0.0.1:{port}", port, log)
    try:
        wait_ready(server.url, process)
        yield server
    except BaseException:
        sys.stderr.write(server.output()[-4000:])
        raise
    finally:
        server.terminate()


def test_image_command_serves_and_drains_on_sigterm(repo: Path, tmp_path: Path) -> None:
    write_model(repo, "clf", classifier_model())
    slow, w = chain_model()
    write_model(repo, "slow", slow)
    with image_process(repo, tmp_path) as server:
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        assert any(
            line.startswith('{"') and "level" in json.loads(line) for line in server.output().splitlines()
        ), "DEEPSERVE_LOG_FORMAT=json from the image's ENV: one JSON object a line"

        x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        answer = httpx.post(f"{server.url}/v2/models/clf/infer", json=v2_request(x), timeout=30)
        assert answer.status_code == 200, answer.text
        weights, bias = classifier_weights()
        np.testing.assert_allclose(output(answer.json(), "logits"), x @ weights + bias, rtol=1e-5, atol=1e-5)

        exposed = {f.name for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
        assert dashboard_families() <= exposed, dashboard_families() - exposed

        # A slow request in flight, then SIGTERM: it must complete, and the process exit 0.
        x_slow = np.random.default_rng(1).normal(size=(32, 1024)).astype(np.float32)
        response, exit_code = sigterm_during(server, lambda: httpx.post(
            f"{server.url}/v2/models/slow/infer", json=v2_request(x_slow), timeout=120), model="slow")
        assert response.status_code == 200, response.text
        # 0, not -15 (143 in a container, which Kubernetes reports as an Error): a drained stop is clean.
        assert exit_code == 0, server.output()[-3000:]
        expected = x_slow
        for _ in range(600):
            expected = np.tanh(expected @ w)
        np.testing.assert_allclose(output(response.json(), "y"), expected, atol=1e-4)


# ---- the load balancer ---------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        message = "nginx not installed: apt-get install nginx (.ci/setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI ran .ci/setup: a missing nginx is a broken setup, not a skip
        pytest.skip(message)
    return found


@contextmanager
def nginx_in_front_of(backends: list[int], *, nginx: str) -> Iterator[str]:
    """docker/nginx/host.conf + the compose template, rendered for loopback backends; yields the URL."""
    # mkdtemp, not tmp_path: nginx's workers run as `nobody` when started by root, and pytest's
    # tmp folders are private to their owner.
    prefix = Path(tempfile.mkdtemp(prefix="deepserve-nginx-"))
    prefix.chmod(0o755)
    try:
        for folder in ("conf", "logs", "temp"):
            (prefix / folder).mkdir()
        shutil.copy(DOCKER / "nginx" / "host.conf", prefix / "conf" / "nginx.conf")
        port = free_port()
        values = {
            "DEEPSERVE_LB_PORT": f"127.0.0.1:{port}",
            "DEEPSERVE_LB_RESOLVER": "",
            "DEEPSERVE_UPSTREAM_SERVERS": "\n    ".join(
                f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in backends),
        }
        template = (DOCKER / "nginx" / "templates" / "default.conf.template").read_text()
        (prefix / "conf" / "default.conf").write_text(
            re.sub(r"\$\{(DEEPSERVE_\w+)\}", lambda m: values[m.group(1)], template))
        process = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", "conf/nginx.conf", "-e", "logs/error.log", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, (prefix / "logs" / "error.log").read_text()
                try:
                    if httpx.get(f"{url}/nginx-health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.05)
            yield url
        finally:
            process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def served(url: str) -> float:
    return metric_samples(url, "deepserve_requests_total", model="clf")


def test_load_balancer_spreads_requests_and_skips_a_stopped_replica(repo: Path, tmp_path: Path) -> None:
    nginx = nginx_binary()
    write_model(repo, "clf", classifier_model())
    weights, bias = classifier_weights()
    rng = np.random.default_rng(7)
    env = {"DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]'}

    def infer_through(lb: str, client: httpx.Client, count: int) -> None:
        for _ in range(count):
            x = rng.normal(size=(2, 4)).astype(np.float32)
            answer = client.post(f"{lb}/v2/models/clf/infer", json=v2_request(x))
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-request-id"], "the replica's request id comes back through nginx"
            np.testing.assert_allclose(
                output(answer.json(), "logits"), x @ weights + bias, rtol=1e-5, atol=1e-5
            )

    with ExitStack() as stack:
        first = stack.enter_context(run_server(repo, log_dir=tmp_path, env=env))
        second = stack.enter_context(run_server(repo, log_dir=tmp_path, env=env))
        lb = stack.enter_context(nginx_in_front_of([first.port, second.port], nginx=nginx))
        client = stack.enter_context(httpx.Client(timeout=30))

        infer_through(lb, client, 20)
        counts = [served(first.url), served(second.url)]
        assert sum(counts) == 20 and min(counts) >= 5, f"round robin should spread 20 requests: {counts}"

        # The repository API stays on the replicas' own network: 404 through the load balancer.
        hidden = client.post(f"{lb}/v2/repository/index")
        assert hidden.status_code == 404 and hidden.json()["code"] == "not_found", hidden.text
        assert client.post(f"{first.url}/v2/repository/index").status_code != 404, "the replica serves it"

        assert first.terminate() == 0
        before = served(second.url)
        infer_through(lb, client, 20)  # each must succeed: nginx retries the refused connection on `second`
        assert served(second.url) == before + 20


# ---- the image, in Docker ------------------------------------------------------------------------

IMAGE = os.environ.get("DEEPSERVE_TEST_IMAGE", "deepserve:cpu")


def docker_engine() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here; docker/smoke.sh runs the image on a machine with a Docker engine")
    probe = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                           timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no Docker engine reachable (`docker info`: {probe.stderr.strip()[:160]})")
    return docker


def smoke_client() -> Any:
    """docker/smoke_client.py, the HTTP side of docker/smoke.sh, as a module."""
    spec = importlib.util.spec_from_file_location("smoke_client", DOCKER / "smoke_client.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_built_image_serves_every_model_and_drains_on_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    docker = docker_engine()
    found = subprocess.run([docker, "image", "inspect", IMAGE], capture_output=True, text=True, timeout=60,
                           check=False)
    if found.returncode != 0:
        pytest.skip(
            f"{IMAGE} is not built here: docker/smoke.sh builds it (or docker build -f docker/Dockerfile "
            f"-t {IMAGE} .); DEEPSERVE_TEST_IMAGE names another"
        )
    (image,) = json.loads(found.stdout)
    assert image["Config"]["User"] == "10001:10001"
    client = smoke_client()
    name = f"deepserve-test-{os.getpid()}"
    subprocess.run([docker, "run", "-d", "--name", name, "--stop-timeout", "40", IMAGE], check=True,
                   capture_output=True, timeout=120)
    try:
        address = subprocess.run(
            [docker, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
            capture_output=True, text=True, timeout=60, check=True).stdout.split()[0]
        url = f"http://{address}:8000"
        if client.ready(url, name) != 0:
            logs = subprocess.run(
                [docker, "logs", "--tail", "40", name],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            pytest.fail(f"{IMAGE} did not get ready: {capsys.readouterr().out}\n{logs.stdout}{logs.stderr}")
        # The image's own HEALTHCHECK command, run in the container: exit 0 once every model is loaded.
        test = image["Config"]["Healthcheck"]["Test"]
        assert test[0] == "CMD", test
        health = subprocess.run([docker, "exec", name, *test[1:]], capture_output=True, text=True, timeout=60,
                                check=False)
        assert health.returncode == 0, health.stderr
        assert client.models(url) == 0, capsys.readouterr().out
        assert client.inflight(url, [docker, "kill", "--signal", "TERM", name]) == 0, capsys.readouterr().out
        exit_code = subprocess.run([docker, "wait", name], capture_output=True, text=True, timeout=120,
                                   check=True).stdout.strip()
        logs = subprocess.run(
            [docker, "logs", "--tail", "40", name], capture_output=True, text=True, timeout=60, check=False
        )
        assert exit_code == "0", logs.stdout + logs.stderr
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=120, check=False)
