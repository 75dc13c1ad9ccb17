"""One infer implementation behind two entrances, big bodies off the event loop, and `Server-Timing`.

The same requests go to an app with the pure-ASGI fast path and to one without it (the documented
FastAPI route serves them there): answers and errors must be the same bytes, status and headers.
Then the codec workers: bodies decoded (and answers encoded) in a worker process must give what the
inline codec gives, for successes and errors alike.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from onnx import TensorProto, helper, numpy_helper
from onnx_models import _model, classifier_model, write_model
from prometheus_client import REGISTRY
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from service.api.fastpath import InferEntrance
from service.app import create_app
from service.errors import InvalidInput
from service.protocol.codec import DecodeLimits
from service.protocol.pool import CodecPool
from service.settings import Settings

HEADER = "Inference-Header-Content-Length"
CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}


def gather_model() -> Any:
    """i INT64 [B, 1] -> y = [0.5, 1.5, 2.5][i]: ONNX Runtime fails at run time on an index past 2."""
    table = numpy_helper.from_array(np.array([0.5, 1.5, 2.5], dtype=np.float32), "table")
    return _model([helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
                  [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], [table],
                  name="gather")


@pytest.fixture
def models(repo: Path) -> Path:
    write_model(repo, "clf", classifier_model())
    for version, seed in ((1, 0), (2, 1)):
        write_model(repo, "multi", classifier_model(seed=seed), version=version,
                    config={"version_policy": {"policy": "all"}})
    write_model(repo, "gather", gather_model())
    write_model(repo, "broken", b"this is not an onnx file")
    return repo


@asynccontextmanager
async def serve(repo: Path, **overrides: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(Settings(model_repository=repo, **CPU, **overrides))
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deepserve", timeout=60) as client:
            yield app, client


def x_body(x: np.ndarray, **extra: Any) -> bytes:
    inputs = [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
    return orjson.dumps({"inputs": inputs, **extra})


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps({
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    })
    return header + x.tobytes(), {HEADER: str(len(header)), "content-type": "application/octet-stream"}


def requests() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what, path, body, headers): successes and every kind of error the infer path answers."""
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    json_ = {"content-type": "application/json"}
    gz = {**json_, "content-encoding": "gzip"}
    packed, binary_headers = binary_body(x)
    return [
        ("json", "/v2/models/clf/infer", x_body(x, id="7"), json_),
        ("version", "/v2/models/multi/versions/2/infer", x_body(x), json_),
        ("binary", "/v2/models/clf/infer", packed, binary_headers),
        ("gzip", "/v2/models/clf/infer", gzip.compress(x_body(x)), gz),
        ("bad json", "/v2/models/clf/infer", b'{"inputs": [', json_),
        ("bad schema", "/v2/models/clf/infer", b'{"inputs": [{"name": "x"}]}', json_),
        ("bad shape", "/v2/models/clf/infer", x_body(x[:, :3]), json_),
        ("unknown model", "/v2/models/nope/infer", x_body(x), json_),
        ("unknown version", "/v2/models/multi/versions/9/infer", x_body(x), json_),
        ("not ready", "/v2/models/broken/infer", x_body(x), json_),
        ("too many elements", "/v2/models/clf/infer", x_body(np.zeros((40, 4), np.float32)), json_),
        ("unknown encoding", "/v2/models/clf/infer", x_body(x), {**json_, "content-encoding": "br"}),
        ("truncated gzip", "/v2/models/clf/infer", gzip.compress(x_body(x))[:-6], gz),
        ("two gzip members", "/v2/models/clf/infer", gzip.compress(x_body(x)) * 2, gz),
        ("model fails", "/v2/models/gather/infer",
         orjson.dumps({"inputs": [{"name": "i", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}), json_),
    ]


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers but the timing values (different per request by nature)."""
    headers = sorted((k, re.sub(r"dur=[\d.]+", "dur=*", v)) for k, v in response.headers.items())
    return response.status_code, response.content, headers


async def answers(repo: Path, **overrides: Any) -> tuple[FastAPI, dict[str, tuple[int, bytes, list[Any]]]]:
    got = {}
    async with serve(repo, max_tensor_elements=100, **overrides) as (app, client):
        for index, (what, path, body, headers) in enumerate(requests()):
            response = await client.post(path, content=body, headers={**headers, "x-request-id": f"r{index}"})
            got[what] = comparable(response)
    return app, got


async def test_fast_path_and_documented_route_answer_the_same_bytes(models: Path) -> None:
    fast_app, fast = await answers(models)
    route_app, route = await answers(models, infer_fast_path=False)
    assert isinstance(fast_app.middleware_stack, InferEntrance)  # infer requests took the fast path
    assert not isinstance(route_app.middleware_stack, InferEntrance)
    statuses = {what: answer[0] for what, answer in fast.items()}
    assert statuses == {
        "json": 200, "version": 200, "binary": 200, "gzip": 200, "bad json": 400, "bad schema": 400,
        "bad shape": 400, "unknown model": 404, "unknown version": 404, "not ready": 503,
        "too many elements": 413, "unknown encoding": 415, "truncated gzip": 400, "two gzip members": 400,
        "model fails": 500,
    }
    for what in fast:
        assert fast[what] == route[what], what


async def test_limits_and_broken_gzip_name_the_problem(models: Path) -> None:
    async with serve(models, max_tensor_elements=100) as (_, client):
        got = {}
        for what, path, body, headers in requests():
            response = await client.post(path, content=body, headers=headers)
            if response.status_code >= 400:
                got[what] = response.json()
    assert got["too many elements"]["code"] == "payload_too_large"
    assert "160 tensor elements" in got["too many elements"]["error"]
    assert "100" in got["too many elements"]["error"]
    assert "DEEPSERVE_MAX_TENSOR_ELEMENTS" in got["too many elements"]["error"]
    assert "truncated" in got["truncated gzip"]["error"]
    assert "second gzip member" in got["two gzip members"]["error"]
    assert got["model fails"]["code"] == "inference_failed"


def server_timing(response: httpx.Response) -> dict[str, float]:
    entries = dict(re.fullmatch(r"(\w+);dur=([\d.]+)", part.strip()).groups()  # type: ignore[union-attr]
                   for part in response.headers["server-timing"].split(","))
    return {name: float(value) for name, value in entries.items()}


@pytest.mark.parametrize("fast_path", [True, False])
async def test_server_timing_on_infer(models: Path, fast_path: bool) -> None:
    x = np.ones((1, 4), np.float32)
    async with serve(models, infer_fast_path=fast_path) as (_, client):
        ok = await client.post("/v2/models/clf/infer", content=x_body(x))
        missing = await client.post("/v2/models/nope/infer", content=x_body(x))
    timing = server_timing(ok)
    assert set(timing) == {"queue", "compute", "total"}
    assert timing["compute"] > 0
    assert timing["total"] >= timing["queue"] + timing["compute"]
    failed = server_timing(missing)  # errors carry it too; no batch ran
    assert failed["queue"] == 0 and failed["compute"] == 0


def offloaded(stage: str) -> float:
    return REGISTRY.get_sample_value("deepserve_codec_offloaded_total", {"stage": stage}) or 0.0


async def test_codec_workers_answer_as_the_inline_codec(models: Path) -> None:
    """Every request of `requests()` decoded in a worker process (offload threshold 0 bytes) gives the
    inline answer; bodies and answers really went through the workers (the counter says so)."""
    decoded, encoded = offloaded("decode"), offloaded("encode")
    _, in_worker = await answers(models, codec_workers=1, codec_offload_bytes=0)
    assert offloaded("decode") - decoded >= 10  # every request that reached a ready model
    assert offloaded("encode") - encoded >= 4  # the JSON answers
    _, inline = await answers(models, codec_workers=0)
    for what in inline:
        assert in_worker[what] == inline[what], what


async def test_big_binary_body_decodes_inline_and_a_big_json_body_in_a_worker(models: Path) -> None:
    """Binary tensors after a small JSON header are views of the body: no worker at any size. The same
    tensor as JSON text over the threshold goes to a worker. Both answers are the model's."""
    x = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32)
    body, headers = binary_body(x)
    assert len(body) > 384  # over the threshold below; its JSON header is not
    async with serve(models, codec_workers=1, codec_offload_bytes=384) as (_, client):
        decoded = offloaded("decode")
        as_binary = await client.post("/v2/models/clf/infer", content=body, headers=headers)
        assert as_binary.status_code == 200, as_binary.text
        assert offloaded("decode") == decoded
        as_json = await client.post("/v2/models/clf/infer", content=x_body(x))
        assert as_json.status_code == 200, as_json.text
        assert offloaded("decode") == decoded + 1
    length = int(as_binary.headers[HEADER])
    logits = np.frombuffer(as_binary.content[length:], np.float32).reshape(32, 3)
    from_json = np.array(as_json.json()["outputs"][0]["data"]).reshape(32, 3)
    np.testing.assert_allclose(logits, from_json, atol=1e-6)


async def test_big_gzip_body_is_inflated_in_a_worker(models: Path) -> None:
    """A small compressed body that inflates past the offload threshold goes to the workers whole."""
    x = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    body = gzip.compress(x_body(x))
    assert len(body) < 2048 < len(x_body(x))
    decoded = offloaded("decode")
    async with serve(models, codec_workers=1, codec_offload_bytes=2048) as (_, client):
        response = await client.post("/v2/models/clf/infer", content=body,
                                     headers={"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert offloaded("decode") == decoded + 1
    assert np.array(response.json()["outputs"][0]["data"]).shape == (32 * 3,)


async def test_spooled_bodies_leave_no_files_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body over the threshold is spooled to a file; decoded, refused or cut off, the file goes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pool = CodecPool(workers=1, min_bytes=64, limits=DecodeLimits())
    x = np.arange(40, dtype=np.float32).reshape(10, 4)

    def chunks(body: bytes, *, fail: bool = False) -> Receive:
        """ASGI `receive` giving the body in 50-byte messages (a disconnect after 150 bytes with `fail`)."""
        messages: list[Message] = [
            {"type": "http.request", "body": body[start:start + 50], "more_body": start + 50 < len(body)}
            for start in range(0, len(body), 50)]
        if fail:
            messages[3:] = [{"type": "http.disconnect"}]

        async def receive() -> Message:
            return messages.pop(0)

        return receive

    try:
        body = await pool.receive(chunks(x_body(x)))
        assert list(tmp_path.rglob("*.body"))  # spooled, not kept in memory
        decoded = await pool.decode(body, content_encoding=None, header_length=None)
        np.testing.assert_array_equal(decoded.inputs["x"], x)
        bad = await pool.receive(chunks(b'{"inputs": [' + b" " * 200))
        with pytest.raises(InvalidInput, match="not valid JSON"):
            await pool.decode(bad, content_encoding=None, header_length=None)
        with pytest.raises(ClientDisconnect):
            await pool.receive(chunks(x_body(x), fail=True))
        assert not list(tmp_path.rglob("*.body"))
    finally:
        pool.close()
    assert not list(tmp_path.iterdir())


async def test_big_bodies_are_served_where_no_temporary_file_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # mkdtemp fails: no such folder
    pool = CodecPool(workers=1, min_bytes=64, limits=DecodeLimits())
    x = np.arange(40, dtype=np.float32).reshape(10, 4)

    async def receive() -> Message:
        nonlocal sent
        piece, sent = whole[sent:sent + 50], sent + 50
        return {"type": "http.request", "body": piece, "more_body": sent < len(whole)}

    whole, sent = x_body(x), 0
    try:
        body = await pool.receive(receive)
        assert body == x_body(x)  # kept whole, in memory
        decoded = await pool.decode(body, content_encoding=None, header_length=None)  # pickled to the worker
        np.testing.assert_array_equal(decoded.inputs["x"], x)
    finally:
        pool.close()


async def test_a_body_waiting_for_busy_codec_workers_times_out(repo: Path) -> None:
    """Bodies queue for the codec workers inside the request's timeout: with the one worker busy decoding
    big bodies for another model, a request whose model allows 0.3 s gets a 504 saying why, not a wait
    as long as the queue; the big bodies are still answered."""
    write_model(repo, "patient", classifier_model(), config={"max_batch_size": 0, "request_timeout_s": 120})
    write_model(repo, "hasty", classifier_model(), config={"request_timeout_s": 0.3})
    heavy = x_body(np.zeros((1_000_000, 4), dtype=np.float32),
                   outputs=[{"name": "logits", "parameters": {"binary_data": True}}])
    async with serve(repo, codec_workers=1, codec_offload_bytes=0) as (_, client):
        busy = [asyncio.create_task(client.post("/v2/models/patient/infer", content=heavy)) for _ in range(4)]
        while offloaded("decode") == 0:  # the first big body has reached the worker
            await asyncio.sleep(0.01)
        started = time.monotonic()
        hasty = await client.post("/v2/models/hasty/infer", content=x_body(np.ones((1, 4), dtype=np.float32)))
        waited = time.monotonic() - started
        answers = await asyncio.gather(*busy)
    assert hasty.status_code == 504, hasty.text
    assert hasty.json()["code"] == "timeout" and "codec workers did not handle" in hasty.json()["error"]
    assert waited < 30, f"the 0.3 s request waited {waited:.1f} s"
    assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
