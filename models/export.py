"""torch -> ONNX with named, dynamic axes and a fixed opset, checked by onnx.checker.

We use the TorchScript exporter (`dynamo=False`) by default: in torch 2.13 it writes exactly the opset
asked for, takes `dynamic_axes` natively and runs in well under a second. The dynamo exporter writes
opset 18 and cannot convert that down to 17 for graphs with ReduceMean (onnx's axes adapter asserts),
so it is offered as `dynamo=True` for nets the TorchScript tracer cannot handle.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn


class ExportError(RuntimeError):
    """The exported graph is not what was asked for (opset, names, dynamic axes)."""


def export_onnx(
    net: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = 17,
    dynamo: bool = False,
) -> None:
    """Export `net` (switched to eval mode) to `path` and validate the file.

    `dynamic_axes` maps a tensor name to {axis: symbolic name}, e.g. {"image": {0: "batch"}}. After the
    export, the graph must have the requested opset, the given input/output names in order, and a
    symbolic dimension on every requested axis; else ExportError.
    """
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            net,
            example_inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=dynamo,
            **({"external_data": False, "verbose": False} if dynamo else {}),
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    _check_graph(
        model, input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes, opset=opset
    )


def _check_graph(
    model: onnx.ModelProto,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    got_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset and not (got_opset is not None and got_opset >= opset):
        raise ExportError(f"exported opset {got_opset}, asked for {opset}")
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    got_in, got_out = [i.name for i in inputs], [o.name for o in model.graph.output]
    if got_in != input_names or got_out != output_names:
        raise ExportError(
            f"graph has inputs {got_in} and outputs {got_out}, expected {input_names} and {output_names}"
        )
    values = {v.name: v for v in [*inputs, *model.graph.output]}
    for name, axes in dynamic_axes.items():
        if name not in values:
            continue  # an input the tracer dropped as unused is caught by the name check above
        dims = values[name].type.tensor_type.shape.dim
        for axis in axes:
            if axis >= len(dims) or not dims[axis].dim_param:
                raise ExportError(f"axis {axis} of '{name}' is not dynamic in the exported graph")


def opset_of(path: Path) -> int:
    """The default-domain opset of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
