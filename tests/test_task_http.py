"""The /v1 task routes as HTTP: one batcher with /v2 infer, body limits, /docs requests, a real server.

In process (httpx -> the real app) where that shows the behaviour, and against a real uvicorn process
where only a socket can: a 413 that arrives while the client has sent nothing but headers, and the
`example_curl` commands of `GET /v1/models` run by curl itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from conftest import AppClient
from PIL import Image
from server import run_server
from task_models import (
    spell,
    write_audio_classifier,
    write_embedding_model,
    write_image_model,
    write_speech_model,
    write_text_model,
)

CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}


def png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), level).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_every_task(repo: Path) -> None:
    write_image_model(repo, "digits")
    write_text_model(repo, "sentiment")
    write_embedding_model(repo, "embedder")
    write_speech_model(repo, "speech")
    write_audio_classifier(repo, "levels")


def metric(metrics: str, name: str, model: str) -> float:
    found = re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# ---- one batcher for /v1 predict and /v2 infer --------------------------------------------------------


async def test_predict_and_v2_infer_share_one_batcher(repo: Path, app_client: AppClient) -> None:
    """While a slow v2 request holds the model's one instance, a v1 upload and a v2 tensor queue up; the
    next batch holds both. A lone request never waits (the batcher runs it at once), hence the blocker."""
    write_image_model(repo, "shared", slow=True, max_batch_size=2, max_queue_delay_ms=10_000)

    def tensor(value: float) -> dict[str, Any]:
        return {
            "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [value] * 784}]
        }

    async def count(name: str) -> float:
        return metric((await client.get("/metrics")).text, name, "shared")

    async with app_client(**CPU) as client:
        batches, items = await count("deepserve_batch_size_count"), await count("deepserve_batch_size_sum")
        started = await count("deepserve_queue_duration_seconds_count")
        blocker = asyncio.create_task(client.post("/v2/models/shared/infer", json=tensor(2000.0)))  # ~0.5 s
        async with asyncio.timeout(10):
            while await count("deepserve_queue_duration_seconds_count") == started:  # until it computes
                await asyncio.sleep(0.01)
        v1, v2 = await asyncio.wait_for(asyncio.gather(
            client.post("/v1/models/shared/predict", files={"file": ("black.png", png(0), "image/png")}),
            client.post("/v2/models/shared/infer", json=tensor(1.0)),
        ), timeout=8)  # well under the queue delay: the batch was cut because it was full
        assert (await blocker).status_code == 200
        assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
        assert v1.json()["predictions"][0]["labels"][0]["label"] == "0"  # each answered from its own input
        assert int(np.argmax(v2.json()["outputs"][0]["data"])) == 9
        # two batches: the blocker alone, then one holding the v1 and the v2 request
        assert await count("deepserve_batch_size_count") - batches == 2.0
        assert await count("deepserve_batch_size_sum") - items == 3.0


# ---- body limits --------------------------------------------------------------------------------------


class Chunks:
    """A request body of `count` chunks that counts how many the server pulled."""

    def __init__(self, count: int, size: int = 1024) -> None:
        self.count, self.size, self.pulled = count, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield b"\0" * self.size


async def test_oversized_bodies_are_413_before_they_are_read(repo: Path, app_client: AppClient) -> None:
    write_image_model(repo, "digits")
    async with app_client(max_request_bytes=4096, **CPU) as client:
        chunked = Chunks(100)  # no Content-Length: the server counts while it reads
        response = await client.post(
            "/v1/models/digits/predict", content=chunked, headers={"content-type": "image/png"}
        )
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
        # stopped just past 4 KiB of 100 KiB
        assert "4096" in response.json()["error"] and chunked.pulled <= 6
        declared = Chunks(100)  # Content-Length over the limit: refused from the headers alone
        response = await client.post("/v1/models/digits/predict", content=declared,
                                     headers={"content-type": "image/png", "content-length": str(100 * 1024)})
        assert response.status_code == 413 and declared.pulled == 0


# ---- /docs "Try it out" -------------------------------------------------------------------------------


async def test_the_requests_docs_try_it_out_sends_work_for_every_task(
    repo: Path, app_client: AppClient
) -> None:
    """Swagger UI sends what the OpenAPI document declares: multipart `file` uploads (options left empty
    are sent as empty fields) or the document's JSON examples."""
    write_every_task(repo)
    async with app_client(**CPU) as client:
        spec = (await client.get("/openapi.json")).json()
        body = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
        assert "file" in body["multipart/form-data"]["schema"]["required"]
        examples = {k: v["value"] for k, v in body["application/json"]["examples"].items()}
        empty_options = {"top_k": "", "return_probabilities": "", "return_timestamps": ""}
        uploads = [
            ("digits", ("digit.png", png(255), "image/png"), "9"),
            ("speech", ("speech.wav", wav(spell("bad")), "audio/wav"), "bad"),
            ("levels", ("level.wav", wav(np.full(8000, 0.34, dtype=np.float32)), "audio/wav"), "low"),
        ]
        for name, upload, answer in uploads:
            response = await client.post(
                f"/v1/models/{name}/predict", files={"file": upload}, data=empty_options
            )
            assert response.status_code == 200, (name, response.text)
            prediction = response.json()["predictions"][0]
            assert prediction.get("text", prediction.get("labels", [{}])[0].get("label")) == answer
        for name, example in [("digits", "image"), ("sentiment", "text"), ("sentiment", "texts"),
                              ("embedder", "text"), ("speech", "audio")]:
            response = await client.post(f"/v1/models/{name}/predict", json=examples[example])
            assert response.status_code == 200, (name, example, response.text)
        plain = await client.post("/v1/models/sentiment/predict", content=body["text/plain"]["example"],
                                  headers={"content-type": "text/plain"})
        assert plain.status_code == 200, plain.text


# ---- a real server ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_real_server_answers_413_to_headers_alone(repo: Path, tmp_path: Path) -> None:
    """The client announces 1 GB and sends nothing more: the answer must come without the body (no hang)."""
    write_image_model(repo, "digits")
    with run_server(
        repo, log_dir=tmp_path, env={"DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]'}
    ) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)  # times out (fails) rather than hangs if no answer comes
                if not chunk:
                    break
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:200]
        assert json.loads(payload)["code"] == "payload_too_large"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_the_example_curl_commands_of_the_model_list_work(repo: Path, tmp_path: Path) -> None:
    write_every_task(repo)
    work = tmp_path / "files"
    work.mkdir()
    (work / "image.png").write_bytes(png(0))
    (work / "recording.wav").write_bytes(wav(spell("dab")))
    with run_server(
        repo, log_dir=tmp_path, env={"DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]'}
    ) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
        answers = {}
        for model in models:
            command = shlex.split(model["example_curl"])
            assert command[0] == "curl" and server.url in command[-1], model["example_curl"]
            done = subprocess.run(
                [*command, "--silent", "--show-error", "--fail-with-body", "--max-time", "30"],
                cwd=work,
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, (model["name"], done.stdout, done.stderr)
            answers[model["name"]] = json.loads(done.stdout)
    assert answers["digits"]["predictions"][0]["labels"][0]["label"] == "0"
    assert (
        answers["speech"]["predictions"][0]["text"] == "dab" and answers["speech"]["predictions"][0]["words"]
    )
    assert (
        answers["sentiment"]["task"] == "text-classification" and len(answers["embedder"]["embeddings"]) == 1
    )
    assert answers["levels"]["task"] == "audio-classification"

