"""Both HTTP servers (`DEEPSERVE_HTTP_SERVER=uvicorn|granian`), one and two worker processes, run for real.

Each serves v2 infer with the right answer, keeps its credentials in every worker process (workers rebuild
their settings from the environment, secrets included), and on SIGTERM finishes the request in flight
and exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx_models import classifier_model, classifier_weights, slow_model, write_model
from prometheus_client.parser import text_string_to_metric_families
from server import run_server

KEY = "key-for-the-http-server-tests-0123"


def infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def logits(body: dict[str, Any]) -> np.ndarray:
    (out,) = body["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def in_flight(url: str, model: str) -> float:
    """deepserve_requests_in_flight for `model` in the /metrics of whichever worker answers."""
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"Connection": "close"}).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "deepserve_requests_in_flight" and s.labels.get("model") == model)


@pytest.mark.parametrize(("http_server", "workers"), [("uvicorn", 2), ("granian", 1), ("granian", 2)])
def test_server_answers_keeps_credentials_and_drains(repo: Path, tmp_path: Path, http_server: str,
                                                     workers: int) -> None:
    write_model(repo, "clf", classifier_model())
    write_model(repo, "slow", slow_model(width=1024, depth=400, shared=True))
    env = {"DEEPSERVE_HTTP_SERVER": http_server, "DEEPSERVE_WORKERS": str(workers),
           "DEEPSERVE_API_KEYS": f'["{KEY}"]', "DEEPSERVE_LOG_LEVEL": "WARNING"}
    auth = {"Authorization": f"Bearer {KEY}"}
    with run_server(repo, log_dir=tmp_path, env=env) as server:
        x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        refused = httpx.post(f"{server.url}/v2/models/clf/infer", json=infer_body(x), timeout=30)
        assert refused.status_code == 401, refused.text
        weights, bias = classifier_weights()
        for _ in range(4 * workers):  # new connections: every worker process answers with the key
            answer = httpx.post(
                f"{server.url}/v2/models/clf/infer", json=infer_body(x), headers=auth, timeout=30
            )
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(logits(answer.json()), x @ weights + bias, rtol=1e-5, atol=1e-5)

        # A slow request in flight, then SIGTERM: it completes and the server exits 0.
        x_slow = np.random.default_rng(1).normal(size=(32, 1024)).astype(np.float32)
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["response"] = httpx.post(f"{server.url}/v2/models/slow/infer", json=infer_body(x_slow),
                                                headers=auth, timeout=120)
            except httpx.HTTPError as exc:  # reported by the assertion below
                result["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 60
        while in_flight(server.url, "slow") < 1:  # each poll may reach another worker: its own metrics
            assert caller.is_alive(), f"the slow request ended before SIGTERM could be sent: {result}"
            assert time.monotonic() < deadline, "the slow request never showed as in flight"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=90)
        caller.join(timeout=60)
        assert "error" not in result, f"in-flight request failed during shutdown: {result['error']!r}"
        assert result["response"].status_code == 200, result["response"].text
        assert exit_code == 0, server.output()[-3000:]
