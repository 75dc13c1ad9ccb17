"""`Server-Timing` (queue, compute, total in ms) on /v1 predict and explain, as on /v2 infer
(tests/test_v2_paths.py)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import AppClient
from task_models import write_text_model


def server_timing(header: str) -> dict[str, float]:
    parts = [re.fullmatch(r"(\w+);dur=([\d.]+)", part.strip()) for part in header.split(",")]
    assert all(parts), header
    return {m.group(1): float(m.group(2)) for m in parts if m}


async def test_predict_answers_with_server_timing(repo: Path, app_client: AppClient) -> None:
    write_text_model(repo)
    async with app_client(providers=["CPUExecutionProvider"]) as client:
        response = await client.post("/v1/models/sentiment/predict", json={"texts": ["good", "bad"]})
    assert response.status_code == 200, response.text
    timing = server_timing(response.headers["server-timing"])
    assert set(timing) == {"queue", "compute", "total"}
    assert timing["compute"] > 0
    assert timing["total"] >= timing["queue"] + timing["compute"]


async def test_explain_answers_with_server_timing_of_all_its_evaluations(
    repo: Path, app_client: AppClient
) -> None:
    write_text_model(repo)
    async with app_client(providers=["CPUExecutionProvider"]) as client:
        explained = await client.post("/v1/models/sentiment/explain?method=occlusion",
                                      json={"text": "what a lovely day"})
    assert explained.status_code == 200, explained.text
    many = server_timing(explained.headers["server-timing"])
    assert set(many) == {"queue", "compute", "total"}
    assert many["compute"] > 0 and many["total"] >= many["queue"] + many["compute"]
    assert explained.json()["evaluations"] > 1  # several model runs, all counted in one header
