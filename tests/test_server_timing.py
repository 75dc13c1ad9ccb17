"""`Server-Timing` (queue, compute, total in ms) on /v1 predict, as on /v2 infer (tests/test_v2_paths.py)."""

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
