"""Aliases shared across the service: tensors travel between layers as name -> numpy array, and the
one table from Open Inference Protocol datatype names to numpy dtypes."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Tensor = npt.NDArray[Any]
TensorMap = dict[str, Tensor]
FloatArray = npt.NDArray[np.float32]

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    # elements are `bytes` on the wire; ONNX Runtime gets `str` (runtime/session.py)
    "BYTES": np.dtype(object),
}
"""v2 datatype -> the numpy dtype a tensor of it has everywhere in the service and in ONNX Runtime."""
