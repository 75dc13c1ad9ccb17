"""Numeric parity: the exported ONNX graph must compute what the torch net computes.

Each named case (e.g. held-out inputs at batch 1 and batch 8) runs through torch (eval, no_grad) and
ONNX Runtime on CPU; every output is compared. Running the same items at different batch sizes also
catches graphs whose batch axis was baked in at export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond the tolerance (or the graph does not run)."""


def _torch_outputs(net: nn.Module, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = net(*inputs)
    if isinstance(out, Tensor):
        out = (out,)
    elif isinstance(out, dict):
        out = tuple(out.values())
    return [o.detach().cpu().numpy() for o in out]


def check_parity(
    net: nn.Module,
    onnx_path: Path,
    cases: dict[str, tuple[Tensor, ...]],
    *,
    input_names: list[str],
    atol: float = 1e-4,
) -> dict[str, float]:
    """Max abs diff per case over all outputs; raises ParityError naming case, output and diff."""
    net.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    diffs: dict[str, float] = {}
    for case, inputs in cases.items():
        expected = _torch_outputs(net, inputs)
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(input_names, inputs, strict=True)}
        try:
            got = session.run(None, feeds)
        except Exception as exc:  # ORT raises its own untyped errors: shape mismatch, bad axes
            raise ParityError(f"case '{case}': ONNX Runtime failed: {exc}") from exc
        if len(got) != len(expected):
            raise ParityError(f"case '{case}': ONNX gives {len(got)} outputs, torch {len(expected)}")
        worst = 0.0
        for name, g, e in zip(output_names, got, expected, strict=True):
            if g.shape != e.shape:
                raise ParityError(f"case '{case}' output '{name}': ONNX shape {g.shape}, torch {e.shape}")
            if g.size == 0:
                continue
            diff = float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64))))
            if not diff <= atol:  # also catches NaN
                raise ParityError(f"case '{case}' output '{name}': max abs diff {diff:.3g} > atol {atol:g}")
            worst = max(worst, diff)
        diffs[case] = worst
    return diffs
