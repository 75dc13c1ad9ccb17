"""Warm-up of graphs that refuse zeros: a failure is a warning (the model is still served), a config may
give the values to use, and every preferred batch size is warmed up as well as batch 1."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import AppClient
from onnx import TensorProto, helper, numpy_helper
from onnx_models import write_model

from service.repository.config import ModelConfig
from service.runtime.session import OnnxSession

CPU = "CPUExecutionProvider"


def range_model() -> onnx.ModelProto:
    """y = range(0, 4, step) for a 0-d `step`: ONNX Runtime refuses a step of 0, as warm-up's zeros give."""
    step = helper.make_tensor_value_info("step", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    start = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "start")
    limit = numpy_helper.from_array(np.array(4.0, dtype=np.float32), "limit")
    node = helper.make_node("Range", ["start", "limit", "step"], ["y"])
    model = helper.make_model(helper.make_graph([node], "range", [step], [y], initializer=[start, limit]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def fixed_batch_model() -> onnx.ModelProto:
    """x [B, 2] -> reshape to [1, 2]: answers at batch 1 only, so warm-up at any other batch size fails."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    shape = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = helper.make_model(helper.make_graph([node], "fixed", [x], [y], initializer=[shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_graph_that_refuses_zeros_is_served_after_a_warning(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = write_model(tmp_path, "m", range_model()) / "model.onnx"
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        session = OnnxSession.load(path, config=ModelConfig(), providers=[CPU])
    assert "warm-up at batch 1 failed, serving the model anyway" in caplog.text
    assert "warmup: {inputs:" in caplog.text  # says how to fix it
    assert session.run({"step": np.array(2.0, np.float32)})["y"].tolist() == [0.0, 2.0]


def test_warm_up_values_from_the_config_are_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_model(tmp_path, "m", range_model()) / "model.onnx"
    config = ModelConfig.model_validate({"warmup": {"inputs": {"step": 0.5}}})
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        session = OnnxSession.load(path, config=config, providers=[CPU])
    assert "warm-up" not in caplog.text
    assert session.warm_up_logged(config)
    bad = ModelConfig.model_validate({"warmup": {"inputs": {"x": 1.0}}})  # not the input that matters
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        assert not session.warm_up_logged(bad)


def test_every_preferred_batch_size_is_warmed_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_model(tmp_path, "m", fixed_batch_model()) / "model.onnx"
    config = ModelConfig(max_batch_size=8, preferred_batch_sizes=[4, 8])
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        OnnxSession.load(path, config=config, providers=[CPU])
    assert "warm-up at batch 4 failed" in caplog.text  # batch 1 passed, then 4 was tried
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.runtime.session"):
        OnnxSession.load(
            path, config=ModelConfig(max_batch_size=0, preferred_batch_sizes=[4]), providers=[CPU]
        )
    assert "warm-up" not in caplog.text  # batching off: batch 1 only


def test_warmup_config_is_validated() -> None:
    with pytest.raises(ValueError, match="warmup"):
        ModelConfig.model_validate({"warmup": {"input": {"sr": 16000}}})


async def test_a_model_whose_warm_up_fails_is_ready_over_http(repo: Path, app_client: AppClient) -> None:
    write_model(repo, "refuses-zeros", range_model())
    async with app_client() as client:
        ready = await client.get("/v2/models/refuses-zeros/ready")
        assert ready.status_code == 200
        body = {"inputs": [{"name": "step", "datatype": "FP32", "shape": [], "data": [1.5]}]}
        answer = await client.post("/v2/models/refuses-zeros/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [0.0, 1.5, 3.0]
        metadata = (await client.get("/v2/models/refuses-zeros")).json()
        assert metadata["inputs"] == [{"name": "step", "datatype": "FP32", "shape": []}]
