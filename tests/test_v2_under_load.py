"""The v2 infer route under concurrent HTTP traffic: batches form, a full queue answers 503 at once,
and a reload while requests are in flight loses none of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from conftest import AppClient
from onnx_models import batch_size_model, classifier_model, classifier_weights, slow_model, write_model

CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}


def body(name: str, x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }


def histogram(metrics: str, name: str, model: str) -> tuple[float, float]:
    """(sum, count) of a histogram for one model from the Prometheus text."""
    values = {}
    for line in metrics.splitlines():
        for part in ("_sum", "_count"):
            if line.startswith(f"{name}{part}{{") and f'model="{model}"' in line:
                values[part] = float(line.rsplit(" ", 1)[1])
    return values["_sum"], values["_count"]


async def queued_jobs(client: httpx.AsyncClient, model: str) -> float:
    """Jobs of `model` that went through a batch queue so far (the queue-time histogram's count)."""
    text = (await client.get("/metrics")).text
    if f'deepserve_queue_duration_seconds_count{{model="{model}"' not in text:
        return 0.0
    return histogram(text, "deepserve_queue_duration_seconds", model)[1]


async def test_concurrent_requests_are_computed_in_shared_batches(repo: Path, app_client: AppClient) -> None:
    # Batches are cut by size, not by the clock: 24 requests fill three batches of 8 however slowly
    # they arrive, as long as it is within the (long) delay; a tight delay let a loaded machine
    # send them one by one.
    write_model(repo, "bs", batch_size_model(), config={"max_batch_size": 8, "max_queue_delay_ms": 5_000})
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 4), dtype=np.float32) for _ in range(24)]
    async with app_client(**CPU) as client:
        answers = await asyncio.gather(*(client.post("/v2/models/bs/infer", json=body("x", x)) for x in xs))
        sizes = []
        for x, response in zip(xs, answers, strict=True):
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            np.testing.assert_allclose(np.array(outputs["y"]["data"]).reshape(1, 4), 2 * x, rtol=1e-6)
            sizes.append(outputs["batch"]["data"][0])
        assert max(sizes) > 1, sizes  # the model saw a batch larger than any one request
        total, batches = histogram((await client.get("/metrics")).text, "deepserve_batch_size", "bs")
        assert total == 24 and batches < 24, (total, batches)


async def test_a_full_queue_answers_503_with_retry_after_at_once(repo: Path, app_client: AppClient) -> None:
    write_model(repo, "slow", slow_model(width=1024, depth=48),
                config={"max_batch_size": 0, "max_queue_size": 2})
    x = np.zeros((1, 1024), np.float32)
    async with app_client(**CPU) as client:
        # the registry is process-wide: other tests' "slow" counted
        before = await queued_jobs(client, "slow")
        results = await asyncio.gather(
            *(client.post("/v2/models/slow/infer", json=body("x", x)) for _ in range(12)))
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
        assert set(statuses) <= {200, 503}, statuses
        for response in results:
            if response.status_code == 503:
                assert response.headers["retry-after"].isdigit(), response.headers
                assert response.json()["code"] == "queue_full", response.text
        # refused, not queued: only the answered requests ever waited in the queue
        queued = await queued_jobs(client, "slow") - before
        assert queued == statuses.count(200), (queued, statuses)


async def test_reload_under_concurrent_traffic_loses_no_request(repo: Path, app_client: AppClient) -> None:
    write_model(repo, "clf", classifier_model(seed=0), config={"max_batch_size": 8, "max_queue_delay_ms": 1})
    x = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
    answers = {seed: x @ w + b for seed in (0, 1, 2) for w, b in [classifier_weights(seed=seed)]}
    async with app_client(**CPU) as client:
        stop = asyncio.Event()
        seen: list[int] = []
        progress = asyncio.Condition()

        async def traffic() -> None:
            try:
                while not stop.is_set():
                    response = await client.post("/v2/models/clf/infer", json=body("x", x))
                    assert response.status_code == 200, response.text
                    logits = np.array(response.json()["outputs"][0]["data"]).reshape(1, 3)
                    seen.append(next(s for s, a in answers.items() if np.allclose(logits, a, atol=1e-5)))
                    async with progress:
                        progress.notify_all()
            finally:
                async with progress:
                    progress.notify_all()

        async def served(more: int) -> None:
            """Wait until `more` further answers came back (events, not sleeps); a failed worker raises."""
            target = len(seen) + more
            async with progress:
                await progress.wait_for(lambda: len(seen) >= target or any(w.done() for w in workers))
            for worker in workers:
                if worker.done():
                    worker.result()

        workers = [asyncio.create_task(traffic()) for _ in range(8)]
        for seed in (1, 2):
            await served(20)
            write_model(repo, "clf", classifier_model(seed=seed))  # new weights in the same version folder
            response = await client.post("/v2/repository/models/clf/load")
            assert response.status_code == 200, response.text
        await served(20)
        stop.set()
        await asyncio.gather(*workers)  # any failed request raised above
        assert seen[0] == 0 and seen[-1] == 2, (seen[:3], seen[-3:])
        assert set(seen) == {0, 1, 2}, "each weight set served some requests"
