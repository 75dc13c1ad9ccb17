"""INT8 quantization (models/quantize.py) on real ONNX Runtime: static QDQ and dynamic variants answer like
the FP32 graph (argmax agreement, the INT8 tolerance) from a smaller file, and serve like any model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import AppClient
from onnx_models import classifier_model, classifier_weights, write_model

pytest.importorskip("onnxruntime.quantization")

from models.quantize import MIN_AGREEMENT, _session, quantize_file  # noqa: E402


def digits_like(rng: np.random.Generator, count: int) -> np.ndarray:
    """Inputs that belong to a class (near one weight column), as real held-out data does: not ties."""
    weights, _ = classifier_weights(n_in=256, n_classes=10, seed=3)
    columns = weights[:, rng.integers(0, 10, size=count)].T  # (count, 256)
    noise = rng.normal(size=(count, 256))
    return (2.0 * columns / np.linalg.norm(columns, axis=1, keepdims=True) * 16 + noise).astype(np.float32)


def wide_classifier(tmp_path: Path) -> Path:
    path = tmp_path / "fp32.onnx"
    onnx.save(classifier_model(n_in=256, n_classes=10, seed=3), path)
    return path


@pytest.mark.parametrize("static", [True, False], ids=["static-qdq", "dynamic"])
def test_int8_agrees_with_fp32_from_a_smaller_file(tmp_path: Path, static: bool) -> None:
    src, dst = wide_classifier(tmp_path), tmp_path / "int8.onnx"
    rng = np.random.default_rng(0)
    calibration = [{"x": digits_like(rng, 32)} for _ in range(4)]
    quantize_file(src, dst, static=static, calibration=calibration)
    held_out = digits_like(rng, 512)
    fp32 = _session(src).run(None, {"x": held_out})[0].argmax(1)
    int8 = _session(dst).run(None, {"x": held_out})[0].argmax(1)
    assert (fp32 == int8).mean() >= MIN_AGREEMENT
    assert dst.stat().st_size < 0.4 * src.stat().st_size
    ops = {node.op_type for node in onnx.load(str(dst)).graph.node}
    assert ("QuantizeLinear" in ops) if static else ("DynamicQuantizeLinear" in ops or "MatMulInteger" in ops)


async def test_an_int8_model_is_served_over_v2(tmp_path: Path, repo: Path, app_client: AppClient) -> None:
    dst = tmp_path / "int8.onnx"
    rng = np.random.default_rng(1)
    quantize_file(wide_classifier(tmp_path), dst, static=True,
                  calibration=[{"x": rng.normal(size=(32, 256)).astype(np.float32)}])
    write_model(repo, "clf-int8", dst.read_bytes())
    x = rng.normal(size=(3, 256)).astype(np.float32)
    expected = _session(dst).run(None, {"x": x})[0]
    async with app_client() as client:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 256], "data": x.ravel().tolist()}]}
        response = await client.post("/v2/models/clf-int8/infer", json=body)
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
