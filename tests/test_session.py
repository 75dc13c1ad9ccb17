"""OnnxSession and provider resolution on real ONNX Runtime sessions (this machine has no GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx_models import batch_size_model, identity_model, write_model
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from service.repository.config import ModelConfig
from service.runtime import providers
from service.runtime.providers import resolve_providers
from service.runtime.session import OnnxSession, session_options, warmup_tensor

CPU = "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def no_provider_marked_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process: no provider has fallen back yet."""
    monkeypatch.setattr(providers, "_unusable", set())


def test_resolve_keeps_available_preferences_with_cpu_last() -> None:
    assert resolve_providers([CPU, "CUDAExecutionProvider"])[-1] == CPU
    assert resolve_providers(["NoSuchExecutionProvider"]) == [CPU]
    assert resolve_providers([]) == [CPU]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        wanted = ["CUDAExecutionProvider", CPU, "CUDAExecutionProvider"]
        assert resolve_providers(wanted) == ["CUDAExecutionProvider", CPU]


def test_cuda_requested_reports_what_really_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_model(tmp_path, "m", batch_size_model()) / "model.onnx"
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        session = OnnxSession.load(path, config=ModelConfig(), providers=["CUDAExecutionProvider", CPU])
    # ONNX Runtime's own answer, without our resolution: what it runs when asked for CUDA (where this build
    # has it) and then CPU
    asked = [p for p in ("CUDAExecutionProvider", CPU) if p in ort.get_available_providers()]
    assert session.providers == ort.InferenceSession(str(path), providers=asked).get_providers()
    if session.providers[0] == CPU:  # no usable GPU: the fallback is reported, not hidden
        assert "CUDAExecutionProvider was requested" in caplog.text


def test_a_provider_that_fell_back_is_not_asked_for_again(tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", batch_size_model()) / "model.onnx"
    first = OnnxSession.load(path, config=ModelConfig(), providers=["CUDAExecutionProvider", CPU])
    if first.providers[0] != CPU:
        pytest.skip("CUDA works here: nothing falls back")
    assert resolve_providers(["CUDAExecutionProvider", CPU]) == [CPU]  # ONNX Runtime is not retried
    again = OnnxSession.load(path, config=ModelConfig(), providers=["CUDAExecutionProvider", CPU])
    assert again.providers == [CPU]


def test_graph_tensors_become_specs_with_dynamic_dims_as_minus_one(tmp_path: Path) -> None:
    model = identity_model(
        [("ids", "INT64", ["batch", "seq"]), ("s", "BYTES", [None, 2]), ("h", "FP16", [1, 3])]
    )
    session = OnnxSession.load(
        write_model(tmp_path, "m", model) / "model.onnx", config=ModelConfig(), providers=[CPU]
    )
    assert [(s.name, s.datatype, s.shape) for s in session.inputs] == [
        ("ids", "INT64", [-1, -1]), ("s", "BYTES", [-1, 2]), ("h", "FP16", [1, 3])
    ]
    assert [s.name for s in session.outputs] == ["ids_out", "s_out", "h_out"]


def test_run_returns_every_output_and_passes_strings_as_text(tmp_path: Path) -> None:
    model = identity_model([("s", "BYTES", ["b"]), ("x", "FP32", ["b", 2])])
    session = OnnxSession.load(
        write_model(tmp_path, "m", model) / "model.onnx", config=ModelConfig(), providers=[CPU]
    )
    out = session.run(
        {"s": np.array([b"caf\xc3\xa9", "tea"], dtype=object), "x": np.ones((2, 2), np.float32)}
    )
    assert set(out) == {"s_out", "x_out"}
    assert out["s_out"].tolist() == ["café", "tea"]  # bytes are not str()-ed into "b'...'"
    assert out["x_out"].dtype == np.float32


WARM_DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT64": np.int64, "FP16": np.float16, "FP64": np.float64,
               "BYTES": np.object_}


def test_warm_up_runs_on_zeros_of_every_dtype(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = identity_model([(f"t{i}", dt, ["b", 2]) for i, dt in enumerate(WARM_DTYPES)])
    path = write_model(tmp_path, "m", model) / "model.onnx"
    session = OnnxSession.load(path, config=ModelConfig(warmup=True), providers=[CPU])
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        assert session.warm_up_logged(ModelConfig(preferred_batch_sizes=[4]))  # batch 1 and 4, every dtype
    assert "warm-up" not in caplog.text
    feed = {spec.name: warmup_tensor(spec, None, batch_size=None) for spec in session.inputs}
    out = session.run(feed)  # what warm-up feeds: zeros of each input's dtype, dynamic axes 1
    for i, dtype in enumerate(WARM_DTYPES.values()):
        echoed = out[f"t{i}_out"]
        assert echoed.shape == (1, 2)
        if dtype is np.object_:
            assert {v.decode() if isinstance(v, bytes) else v for v in echoed.ravel().tolist()} == {""}
        else:
            assert echoed.dtype == dtype and not echoed.any()


def test_warm_up_failure_is_a_warning_not_a_load_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_model(tmp_path, "m", batch_size_model(features=4)) / "model.onnx"
    config = ModelConfig.model_validate({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 5]}]})
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        OnnxSession.load(path, config=config, providers=[CPU])  # the registry then refuses the shape clash
    assert "warm-up at batch 1 failed" in caplog.text
    caplog.clear()
    OnnxSession.load(path, config=config.model_copy(update={"warmup": False}), providers=[CPU])
    assert "warm-up" not in caplog.text


def test_session_options_follow_the_config() -> None:
    options = session_options(
        ModelConfig(intra_op_threads=1, inter_op_threads=2, graph_optimization_level="basic")
    )
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert (
        session_options(ModelConfig()).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )


def test_a_corrupt_file_raises_naming_it(tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", b"not a model") / "model.onnx"
    with pytest.raises(InvalidProtobuf, match="INVALID_PROTOBUF.*model.onnx"):
        OnnxSession.load(path, config=ModelConfig(), providers=[CPU])
