"""The v2 model repository extension over real HTTP: index, load (and reload), unload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import AppClient
from onnx_models import classifier_model, classifier_weights, write_model

CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}]}


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    message: str = body["error"]
    return message


def expected(seed: int) -> np.ndarray:
    w, b = classifier_weights(seed=seed)
    return X @ w + b


async def answer(client: httpx.AsyncClient, name: str) -> np.ndarray:
    response = await client.post(f"/v2/models/{name}/infer", json=BODY)
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"]).reshape(2, 3)


@pytest.fixture
def models(repo: Path) -> Path:
    write_model(repo, "clf", classifier_model())
    write_model(repo, "broken", b"not onnx")
    return repo


async def test_index_lists_every_version_with_state_and_reason(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        empty_body = await client.post("/v2/repository/index")  # tritonclient sends no body
        assert empty_body.status_code == 200
        entries = {e["name"]: e for e in empty_body.json()}
        assert entries["clf"] == {"name": "clf", "version": "1", "state": "READY", "reason": ""}
        assert entries["broken"]["state"] == "UNAVAILABLE" and "model.onnx" in entries["broken"]["reason"]
        ready = (await client.post("/v2/repository/index", json={"ready": True})).json()
        assert [e["name"] for e in ready] == ["clf"]
        assert len((await client.post("/v2/repository/index", json={"ready": False})).json()) == 2


async def test_index_body_must_match_the_schema(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        message = error_of(await client.post("/v2/repository/index", content=b'{"ready": "maybe"}'), 400,
                           "invalid_input")
        assert "RepositoryIndexRequest" in message and "ready" in message
        error_of(await client.post("/v2/repository/index", content=b"{nope"), 400, "invalid_input")


async def test_load_a_model_added_after_start(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        write_model(models, "late", classifier_model(seed=2))
        listed = {e["name"]: e for e in (await client.post("/v2/repository/index")).json()}
        assert listed["late"]["state"] == "UNAVAILABLE" and listed["late"]["reason"] == "not loaded"
        error_of(await client.post("/v2/models/late/infer", json=BODY), 404, "model_not_found")

        response = await client.post("/v2/repository/models/late/load")
        assert (response.status_code, response.content) == (200, b"")
        assert (await client.get("/v2/models/late/ready")).status_code == 200
        np.testing.assert_allclose(await answer(client, "late"), expected(2), atol=1e-5)


async def test_reload_swaps_in_the_new_weights(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        np.testing.assert_allclose(await answer(client, "clf"), expected(0), atol=1e-5)
        write_model(models, "clf", classifier_model(seed=5))
        response = await client.post("/v2/repository/models/clf/load", json={"parameters": {}})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(await answer(client, "clf"), expected(5), atol=1e-5)


async def test_load_failures(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        message = error_of(await client.post("/v2/repository/models/broken/load"), 400, "model_load_failed")
        assert "broken" in message and "model.onnx" in message
        error_of(await client.post("/v2/repository/models/ghost/load"), 404, "model_not_found")
        override = await client.post("/v2/repository/models/clf/load", json={"parameters": {"config": "{}"}})
        assert "['config']" in error_of(override, 400, "invalid_input")
        # a failed reload keeps the old version serving
        write_model(models, "clf", b"corrupt now")
        error_of(await client.post("/v2/repository/models/clf/load"), 400, "model_load_failed")
        np.testing.assert_allclose(await answer(client, "clf"), expected(0), atol=1e-5)


async def test_unload_then_load_again(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        # the body as tritonclient sends it
        response = await client.post("/v2/repository/models/clf/unload",
                                     json={"parameters": {"unload_dependents": False}})
        assert (response.status_code, response.content) == (200, b"")
        ready = await client.get("/v2/models/clf/ready")
        assert "UNAVAILABLE" in error_of(ready, 503, "model_not_ready")  # known but unready: never 404
        assert (await client.post("/v2/models/clf/infer", json=BODY)).status_code in (404, 503)
        assert (await client.get("/v2/health/ready")).status_code == 200  # an unload is not a failure
        assert (await client.post("/v2/repository/models/clf/load")).status_code == 200
        np.testing.assert_allclose(await answer(client, "clf"), expected(0), atol=1e-5)
        error_of(await client.post("/v2/repository/models/ghost/unload"), 404, "model_not_found")


async def test_strict_readiness_ignores_deliberate_unloads(repo: Path, app_client: AppClient) -> None:
    write_model(repo, "clf", classifier_model())
    async with app_client(strict_readiness=True, **CPU) as client:
        assert (await client.post("/v2/repository/models/clf/unload")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
