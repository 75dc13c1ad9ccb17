"""Nothing internal leaks and everything is counted honestly (issue 10), over real HTTP on the real app.

- a 500 answers "internal error" + the request id; the ONNX Runtime text goes to the log only;
- no absolute path in any response (paths are relative to the model repository);
- a malformed x-request-id is replaced, never echoed;
- broken task side files (tokenizer, labels, vocabulary) make the model UNAVAILABLE at load, with the reason;
- unloading unknown names leaves no lock behind; metric labels stay bounded; /v1 is counted by route;
- a stop whose grace period ends while ONNX Runtime still computes says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from onnx import TensorProto, helper, numpy_helper
from onnx_models import classifier_model, slow_model, write_model
from prometheus_client import REGISTRY
from task_models import write_speech_model, write_text_model

from service.app import create_app
from service.errors import ModelNotFound
from service.middleware import REQUEST_ID
from service.settings import Settings

CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}]}


class Served:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client


Serve = Callable[..., Any]


@pytest.fixture
def serve(repo: Path) -> Callable[..., Any]:
    """`async with serve(**settings) as s:` the real app (s.app) behind httpx (s.client)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Served]:
        app = create_app(Settings(model_repository=repo, **{**CPU, **overrides}))
        async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://deepserve", timeout=60
            ) as client:
                yield Served(app, client)

    return run


def reshape_fails_at_run_time() -> onnx.ModelProto:
    """x FP32 [B, 4] -> Reshape to [-1, 3]: ONNX Runtime raises at run time unless 4*B is a multiple of 3."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="secret_reshape_node")],
        "fails",
        [x],
        [y],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def assert_no_absolute_path(text: str, repo: Path) -> None:
    for root in {str(repo), str(repo.resolve()), str(repo.parent), "/tmp/", "/home/", "/usr/", "/work/"}:
        assert root not in text, (root, text)


# ---- 500s ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi-route"])
async def test_a_500_says_internal_error_with_the_request_id_and_logs_the_details(
    repo: Path, serve: Serve, caplog: pytest.LogCaptureFixture, fast_path: bool
) -> None:
    write_model(repo, "fails", reshape_fails_at_run_time(), config={"warmup": False, "max_batch_size": 0})
    one = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]}
    async with serve(infer_fast_path=fast_path) as s:
        caplog.set_level(logging.WARNING)
        response = await s.client.post(
            "/v2/models/fails/infer", json=one, headers={"x-request-id": "trace-42"}
        )
    assert response.status_code == 500, response.text
    body = response.json()
    assert body == {"error": "internal error (request id trace-42); the server log has the details",
                    "code": "inference_failed"}
    assert response.headers["x-request-id"] == "trace-42"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret_reshape_node" in logged or "Reshape" in logged  # the details went to the log


# ---- paths --------------------------------------------------------------------------------------------


async def test_no_absolute_path_in_any_response(repo: Path, serve: Serve) -> None:
    write_model(repo, "clf", classifier_model())
    write_model(repo, "broken", b"not onnx")
    (repo / "badconf" / "1").mkdir(parents=True)
    (repo / "badconf" / "config.yaml").write_text("max_batch_size: lots\n")
    (repo / "badconf" / "1" / "model.onnx").write_bytes(classifier_model().SerializeToString())
    (repo / "nofile" / "1").mkdir(parents=True)
    async with serve() as s:
        c = s.client
        answers = [
            await c.post("/v2/repository/index"),
            await c.get("/v2/models/broken"),
            await c.get("/v2/models/badconf"),
            await c.get("/v2/models/broken/ready"),
            await c.post("/v2/models/broken/infer", json=BODY),
            await c.post("/v2/repository/models/broken/load"),
            await c.post("/v2/repository/models/nothere/load"),
            await c.post("/v2/repository/models/nofile/load"),
            await c.get("/v1/models"),
            await c.get("/v1/models/broken"),
        ]
    for answer in answers:
        assert_no_absolute_path(answer.text, repo)
    index = {e["name"]: e for e in answers[0].json()}
    assert index["broken"]["reason"].startswith("broken/1/model.onnx: ")  # relative to the repository
    assert index["badconf"]["reason"].startswith("badconf/config.yaml: ")
    assert answers[5].status_code == 400 and "broken/1/model.onnx" in answers[5].json()["error"]


# ---- x-request-id -------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["a" * 129, "two words", "<script>", "id\\u00e9", "x;y", "", "a\"b"])
async def test_a_malformed_request_id_is_replaced(repo: Path, serve: Serve, given: str) -> None:
    write_model(repo, "clf", classifier_model())
    async with serve() as s:
        response = await s.client.post("/v2/models/clf/infer", json=BODY, headers={"x-request-id": given})
        other = await s.client.get("/v2/models/nope", headers={"x-request-id": given})
    for answer in (response, other):
        echoed = answer.headers["x-request-id"]
        assert echoed != given and REQUEST_ID.fullmatch(echoed), echoed
        assert given not in answer.text or not given


@pytest.mark.parametrize(
    "given", ["3f2a9c1e-8d4b-4e0f-9a7c-1b2c3d4e5f60", "a" * 128, "00-abc-01", "trace:1/2+3=4@x_y.z"]
)
async def test_a_well_formed_request_id_is_kept(repo: Path, serve: Serve, given: str) -> None:
    write_model(repo, "clf", classifier_model())
    async with serve() as s:
        response = await s.client.post("/v2/models/clf/infer", json=BODY, headers={"x-request-id": given})
    assert response.status_code == 200 and response.headers["x-request-id"] == given


# ---- side files at load -------------------------------------------------------------------------------


def _break_tokenizer_missing(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def _break_tokenizer_corrupt(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"model": {"type": "WordLevel", "vocab": ')


def _break_labels(folder: Path) -> None:
    config = folder.parent / "config.yaml"
    text = config.read_text()
    assert "  - two\n" in text
    config.write_text(text.replace("  - two\n", "  - two\n  - three\n"))


@pytest.mark.parametrize(("breakage", "reason"), [
    (_break_tokenizer_missing, r"tokenizer tokenizer\.json: .*missing"),
    (_break_tokenizer_corrupt, r"tokenizer tokenizer\.json: .*cannot be read"),
    (_break_labels, r"task\.labels has 4 names but output 'logits' has 3 classes"),
], ids=["tokenizer-missing", "tokenizer-corrupt", "labels-count"])
async def test_broken_side_files_make_the_model_unavailable_at_load(
    repo: Path, serve: Serve, breakage: Callable[[Path], None], reason: str
) -> None:
    breakage(write_text_model(repo, "sentiment"))
    write_text_model(repo, "fine")
    async with serve() as s:
        meta = (await s.client.get("/v2/models/sentiment")).json()
        ready = await s.client.get("/v2/models/sentiment/ready")
        predict = await s.client.post("/v1/models/sentiment/predict", json={"text": "good"})
        fine = await s.client.post("/v1/models/fine/predict", json={"text": "good"})
    assert meta["parameters"]["state"] == "UNAVAILABLE" and re.search(reason, meta["parameters"]["error"]), (
        meta
    )
    assert_no_absolute_path(meta["parameters"]["error"], repo)
    assert ready.status_code == 503
    assert predict.status_code == 503 and predict.json()["code"] == "model_not_ready", predict.text
    assert re.search(reason, predict.json()["error"])
    assert fine.status_code == 200, fine.text


async def test_a_vocabulary_that_does_not_match_the_output_is_refused_at_load(
    repo: Path, serve: Serve
) -> None:
    write_speech_model(repo, "speech", task={"vocabulary": ["_", "a", "b"]})
    async with serve() as s:
        meta = (await s.client.get("/v2/models/speech")).json()
    assert meta["parameters"]["state"] == "UNAVAILABLE"
    assert re.search(
        r"task\.vocabulary has 3 symbols but output 'log_probs' has \d+", meta["parameters"]["error"]
    )


async def test_a_task_naming_a_missing_input_is_refused_at_load(repo: Path, serve: Serve) -> None:
    write_text_model(repo, "sentiment", task={"input_ids": "ids"})
    async with serve() as s:
        meta = (await s.client.get("/v2/models/sentiment")).json()
    assert meta["parameters"]["state"] == "UNAVAILABLE"
    assert "task.input_ids is 'ids'" in meta["parameters"]["error"]


# ---- registry -----------------------------------------------------------------------------------------


async def test_unloading_unknown_names_leaves_no_lock_behind(repo: Path, serve: Serve) -> None:
    write_model(repo, "clf", classifier_model())
    async with serve() as s:
        registry = s.app.state.registry
        before = len(registry._locks)
        for i in range(50):
            response = await s.client.post(f"/v2/repository/models/random-{i}/unload")
            assert response.status_code == 404, response.text
        assert len(registry._locks) == before
        assert (await s.client.post("/v2/repository/models/clf/unload")).status_code == 200


def _label_values(metric: str, label: str, **match: str) -> set[str]:
    found = set()
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in match.items()):
                found.add(sample.labels[label])
    return found


async def test_metric_labels_only_take_known_model_versions(repo: Path, serve: Serve) -> None:
    write_model(repo, "broken_m", b"not onnx")
    write_model(repo, "clf", classifier_model())
    async with serve() as s:
        for version in ("1", "01", "001", "0001", "00001"):
            response = await s.client.post(f"/v2/models/broken_m/versions/{version}/infer", json=BODY)
            assert response.status_code == 503, response.text
        for version in ("7", "abc", "1" * 30):
            assert (
                await s.client.post(f"/v2/models/clf/versions/{version}/infer", json=BODY)
            ).status_code == 404
        for name in ("nope", "x" * 100):
            assert (await s.client.post(f"/v2/models/{name}/infer", json=BODY)).status_code == 404
    assert _label_values("deepserve_requests_total", "version", model="broken_m") == {"1"}
    assert _label_values("deepserve_requests_total", "version", model="clf") <= {"1"}
    models = _label_values("deepserve_requests_total", "model")
    assert "nope" not in models and "x" * 100 not in models


async def test_v1_predict_is_counted_like_v2_infer_by_route(repo: Path, serve: Serve) -> None:
    write_text_model(repo, "counted")

    def sample(metric: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(metric, {"model": "counted", "version": "1", "route": "v1_predict",
                                                  **labels}) or 0.0

    ok, bad = (
        sample("deepserve_requests_total", outcome="success"),
        sample("deepserve_request_failures_total", reason="invalid_input"),
    )
    timed = sample("deepserve_request_duration_seconds_count")
    async with serve() as s:
        assert (await s.client.post("/v1/models/counted/predict", json={"text": "good"})).status_code == 200
        assert (await s.client.post("/v1/models/counted/predict", json={"text": "   "})).status_code == 400
        text = (await s.client.get("/metrics")).text
    assert sample("deepserve_requests_total", outcome="success") == ok + 1
    assert sample("deepserve_request_failures_total", reason="invalid_input") == bad + 1
    assert sample("deepserve_request_duration_seconds_count") == timed + 2
    assert (
        'deepserve_requests_total{model="counted",outcome="success",route="v1_predict",version="1"}' in text
    )


async def test_runs_still_computing_after_the_grace_period_are_logged_as_abandoned(
    repo: Path, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    write_model(repo, "slow", slow_model(width=512, depth=24), config={"max_batch_size": 0, "warmup": False})
    caplog.set_level(logging.INFO, logger="service.repository.registry")
    async with serve(shutdown_grace_s=0) as s:
        model = s.app.state.registry.get("slow")
        call = asyncio.ensure_future(model.infer({"x": np.ones((768, 512), dtype=np.float32)}))
        async with asyncio.timeout(60):
            while model.runs_in_flight == 0:  # the run has started in its thread
                await asyncio.sleep(0.005)
        assert (await s.client.post("/v2/repository/models/slow/unload")).status_code == 200
        with pytest.raises(ModelNotFound, match="'slow' is unloaded") as failed:
            await call
        assert failed.value.status == 404  # not computed
        async with asyncio.timeout(120):
            while model.runs_in_flight:  # the abandoned run ends in its thread; its result is dropped
                await asyncio.sleep(0.01)
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 ONNX Runtime run(s) still computing after the 0 s grace period" in m for m in messages), (
        messages
    )
    assert any("abandoned ONNX Runtime run(s) ended" in m for m in messages), messages


# ---- request bodies: stalled and chunked over the limit ----------------------------------------------


async def _stalled(first: bytes, never: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await never.wait()  # a client that stops sending half way
    yield b"}"


async def _chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b" " * size


@pytest.mark.parametrize("path", ["/v2/models/clf/infer", "/v1/models/sentiment/predict"])
async def test_a_stalled_body_gets_408_and_frees_the_request(repo: Path, serve: Serve, path: str) -> None:
    write_model(repo, "clf", classifier_model())
    write_text_model(repo, "sentiment")
    never = asyncio.Event()
    async with serve(request_body_timeout_s=0.2) as s:
        response = await s.client.post(path, content=_stalled(b'{"inputs": [', never),
                                       headers={"content-type": "application/json"})
        assert (await s.client.post("/v2/models/clf/infer", json=BODY)).status_code == 200
    assert response.status_code == 408, response.text
    assert (
        response.json()["code"] == "request_body_timeout"
        and "DEEPSERVE_REQUEST_BODY_TIMEOUT_S" in response.text
    )
    assert response.headers["connection"] == "close"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi-route"])
async def test_a_chunked_body_over_the_limit_is_413_not_500(
    repo: Path, serve: Serve, fast_path: bool
) -> None:
    write_model(repo, "clf", classifier_model())
    async with serve(max_request_bytes=1024, infer_fast_path=fast_path) as s:
        response = await s.client.post("/v2/models/clf/infer", content=_chunks(4, 512))  # no Content-Length
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
