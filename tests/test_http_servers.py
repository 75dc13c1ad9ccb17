"""Both HTTP servers (`DEEPSERVE_HTTP_SERVER=uvicorn|granian`), one and two worker processes, run for real.

Each serves v2 infer with the right answer, keeps its credentials in every worker process (workers rebuild
their settings from the environment, secrets included), counts every worker's requests in whichever
worker answers /metrics (prometheus_client's multiprocess mode), and on SIGTERM finishes the request in
flight and exits 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx_models import classifier_model, classifier_weights, slow_model, write_model
from prometheus_client.parser import text_string_to_metric_families
from server import run_server, sigterm_during

KEY = "key-for-the-http-server-tests-0123"


def infer_body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def logits(body: dict[str, Any]) -> np.ndarray:
    (out,) = body["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def served(exposition: str, model: str) -> float:
    """deepserve_requests_total of `model`'s successful v2 infer requests, from a Prometheus scrape."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if (sample.name == "deepserve_requests_total" and labels.get("model") == model
                    and labels.get("route") == "v2_infer" and labels.get("outcome") == "success"):
                return sample.value
    return 0.0


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
        for _ in range(3 * workers):  # whichever worker answers the scrape counts every worker's requests
            scrape = httpx.get(f"{server.url}/metrics", timeout=30)
            assert scrape.status_code == 200
            assert served(scrape.text, "clf") == 4 * workers, scrape.text[-2000:]

        # A slow request in flight, then SIGTERM: it completes and the server exits 0.
        x_slow = np.random.default_rng(1).normal(size=(32, 1024)).astype(np.float32)
        slow = f"{server.url}/v2/models/slow/infer"
        response, exit_code = sigterm_during(
            server, lambda: httpx.post(slow, json=infer_body(x_slow), headers=auth, timeout=120), model="slow"
        )
        assert response.status_code == 200, response.text
        assert exit_code == 0, server.output()[-3000:]
