"""Aliases shared across the service: tensors travel between layers as name -> numpy array."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Tensor = npt.NDArray[Any]
TensorMap = dict[str, Tensor]
FloatArray = npt.NDArray[np.float32]
