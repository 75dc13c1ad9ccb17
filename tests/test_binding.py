"""IO binding, fixed-shape buckets (the CUDA-graph path) and the GPU-memory batch cap, on CPU.

This machine has no GPU: the same binding code runs with the device "cpu", and its answers must equal
a plain `session.run` on real ONNX Runtime sessions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import AppClient
from onnx_models import batch_size_model, classifier_model, classifier_weights, ragged_sum_model, write_model

from service.repository.config import ModelConfig
from service.runtime import binding
from service.runtime.session import OnnxSession, session_options

CPU = "CPUExecutionProvider"


def load(tmp_path: Path, model: Any, **config: Any) -> OnnxSession:
    path = write_model(tmp_path, "m", model) / "model.onnx"
    return OnnxSession.load(path, config=ModelConfig(**config), providers=[CPU])


def test_io_binding_on_cpu_answers_exactly_as_a_plain_run(tmp_path: Path) -> None:
    bound = load(tmp_path, classifier_model(), io_binding="on")
    plain = ort.InferenceSession(str(bound.path), providers=[CPU])
    assert bound.binding == "io_binding"  # no pinned memory without the CUDA provider
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    for rows in (x, x[:1], x[::2]):  # also a non-contiguous view
        got = bound.run({"x": rows})
        (want,) = plain.run(["logits"], {"x": np.ascontiguousarray(rows)})
        assert got["logits"].dtype == np.float32 and np.array_equal(got["logits"], want)


def test_io_binding_auto_is_off_on_cpu(tmp_path: Path) -> None:
    assert load(tmp_path, classifier_model()).binding == "off"


def test_fixed_buckets_pad_to_the_next_size_and_return_only_the_real_rows(tmp_path: Path) -> None:
    session = load(
        tmp_path, batch_size_model(), cuda_graph=True, max_batch_size=8, preferred_batch_sizes=[4, 8]
    )
    assert session.binding == "fixed [4, 8]"  # no graph without CUDA
    # 11: larger than every bucket
    for items, computed_as in ((1, 4), (3, 4), (4, 4), (6, 8), (8, 8), (11, 11)):
        x = np.arange(items * 4, dtype=np.float32).reshape(items, 4)
        out = session.run({"x": x})
        assert out["y"].shape == (items, 4) and np.array_equal(out["y"], 2 * x)
        assert out["batch"].tolist() == [computed_as] * items


def test_fixed_buckets_hand_out_copies_and_zero_the_padding(tmp_path: Path) -> None:
    session = load(tmp_path, classifier_model(), cuda_graph=True, max_batch_size=4)
    w, b = classifier_weights()
    first_x = np.full((4, 4), 7.0, np.float32)
    first = session.run({"x": first_x})["logits"]
    kept = first.copy()
    second_x = np.ones((1, 4), np.float32)
    second = session.run({"x": second_x})["logits"]
    assert np.array_equal(first, kept)  # the next batch did not overwrite an answer already handed out
    np.testing.assert_allclose(second, second_x @ w + b, rtol=1e-5)
    np.testing.assert_allclose(first, first_x @ w + b, rtol=1e-5)


def test_cuda_graph_needs_static_dims_and_falls_back_to_io_binding(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        session = load(tmp_path, ragged_sum_model(), cuda_graph=True)
    assert session.binding == "io_binding"
    assert "cuda_graph is off" in caplog.text and "static" in caplog.text
    x = np.ones((2, 5), np.float32)
    assert session.run({"x": x})["s"].tolist() == [5.0, 5.0]


def test_provider_list_asks_cuda_for_graphs_only_when_configured() -> None:
    cuda = binding.CUDA
    assert binding.provider_list([cuda, CPU], cuda_graph=False) == [cuda, CPU]
    assert binding.provider_list([cuda, CPU], cuda_graph=True) == [(cuda, {"enable_cuda_graph": "1"}), CPU]
    assert binding.device_of([CPU]) == "cpu" and binding.device_of([cuda, CPU]) == "cuda"


def test_staging_without_pinned_memory_binds_inputs_where_they_lie() -> None:
    staging = binding.Staging(None)
    x = np.ones((2, 3), np.float32)
    assert staging.stage("x", x) is x and not staging.pinned


# ---- batch cap ------------------------------------------------------------------------------------


class FakeDevice:
    """A device of `total` bytes; a batch of n takes `fixed + n * per_item`; the arena keeps its peak."""

    def __init__(self, total: int, fixed: int, per_item: int) -> None:
        self.total, self.fixed, self.per_item, self.peak = total, fixed, per_item, 0
        self.ran: list[int] = []

    def run_at(self, n: int) -> None:
        need = self.fixed + n * self.per_item
        if need > self.total:
            raise RuntimeError(
                f"[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for {need}"
            )
        self.peak = max(self.peak, need)
        self.ran.append(n)

    def free(self) -> int:
        return self.total - self.peak


def test_batch_cap_without_a_device_keeps_the_configured_size() -> None:
    device = FakeDevice(total=1000, fixed=0, per_item=1)
    assert binding.batch_cap(device.run_at, max_batch=32, free_bytes=lambda: None) == 32
    assert device.ran == []


def test_batch_cap_keeps_max_batch_when_it_fits() -> None:
    device = FakeDevice(total=10_000, fixed=100, per_item=50)
    assert binding.batch_cap(device.run_at, max_batch=64, free_bytes=device.free) == 64


def test_batch_cap_halves_then_fills_what_memory_holds() -> None:
    device = FakeDevice(total=2_000, fixed=100, per_item=100)  # 19 items fit
    cap = binding.batch_cap(device.run_at, max_batch=64, free_bytes=device.free, headroom=0.0)
    assert device.ran[:2] == [1, 16]  # 64 and 32 failed
    assert cap == 19
    device.run_at(cap)  # the cap itself fits


def test_batch_cap_raises_errors_that_are_not_out_of_memory() -> None:
    def broken(n: int) -> None:
        if n > 1:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad input")

    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
        binding.batch_cap(broken, max_batch=8, free_bytes=lambda: 1 << 30)


# ---- over HTTP ------------------------------------------------------------------------------------


async def test_binary_answers_are_identical_with_io_binding_and_fixed_buckets(repo: Path,
                                                                              app_client: AppClient) -> None:
    for name, extra in (("plain", {}), ("bound", {"io_binding": "on"}),
                        ("graph", {"cuda_graph": True, "preferred_batch_sizes": [2, 8]})):
        write_model(repo, name, classifier_model(), config={"max_batch_size": 8, **extra})
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    header = (
        b'{"inputs":[{"name":"x","shape":[3,4],"datatype":"FP32","parameters":{"binary_data_size":48}}],'
        b'"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}'
    )
    bodies = {}
    async with app_client(providers=[CPU]) as client:
        for name in ("plain", "bound", "graph"):
            response = await client.post(f"/v2/models/{name}/infer", content=header + x.tobytes(),
                                         headers={"Inference-Header-Content-Length": str(len(header))})
            assert response.status_code == 200, response.text
            length = int(response.headers["Inference-Header-Content-Length"])
            bodies[name] = np.frombuffer(response.content[length:], np.float32)
    w, b = classifier_weights()
    np.testing.assert_allclose(bodies["plain"].reshape(3, 3), x @ w + b, rtol=1e-5)
    assert np.array_equal(bodies["bound"], bodies["plain"])
    np.testing.assert_allclose(bodies["graph"], bodies["plain"], rtol=1e-6)


def test_intra_op_spinning_is_off_unless_configured() -> None:
    key = "session.intra_op.allow_spinning"
    assert session_options(ModelConfig()).get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: ORT's default (spinning)
        session_options(ModelConfig(intra_op_spinning=True)).get_session_config_entry(key)
