"""Pure numpy: stack requests into one batch on axis 0, pad ragged inputs, split outputs back.

No event loop and no ONNX Runtime here, so every rule is unit-tested on plain arrays. Axis 0 of
every tensor is the batch axis; a request contributes `len(array)` items on it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from service.types import Tensor, TensorMap

PadValues = Mapping[str, float | None]


def batch_key(inputs: TensorMap, pad_values: PadValues) -> Hashable:
    """Requests with equal keys can share a batch.

    The key holds each input's dtype and rank, and its non-batch dims unless the input has a
    pad value (then any lengths stack, padded to the longest).
    """
    parts = []
    for name in sorted(inputs):
        array = inputs[name]
        dims = None if pad_values.get(name) is not None else array.shape[1:]
        parts.append((name, array.dtype.str, array.ndim, dims))
    return tuple(parts)


def _pad_to(array: Tensor, shape: tuple[int, ...], value: float) -> Tensor:
    if array.shape[1:] == shape:
        return array
    widths = [(0, 0)] + [(0, target - have) for have, target in zip(array.shape[1:], shape, strict=True)]
    return np.pad(array, widths, mode="constant", constant_values=np.array(value).astype(array.dtype))


def _stack_one(name: str, arrays: Sequence[Tensor], pad_value: float | None) -> Tensor:
    first = arrays[0]
    if any(a.dtype != first.dtype or a.ndim != first.ndim for a in arrays):
        kinds = sorted({f"{a.dtype}/{a.ndim}d" for a in arrays})
        raise ValueError(f"input '{name}' differs in dtype or rank across the batch: {kinds}")
    if first.ndim == 0:
        raise ValueError(f"input '{name}' is a scalar; batching needs a batch axis")
    if all(a.shape[1:] == first.shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    if pad_value is None:
        shapes = sorted({str(list(a.shape[1:])) for a in arrays})
        raise ValueError(f"input '{name}' has different non-batch shapes {shapes} and no pad_value")
    if first.dtype == object:
        raise ValueError(f"input '{name}' holds strings; strings cannot be padded")
    longest = tuple(int(n) for n in np.max([a.shape[1:] for a in arrays], axis=0))
    return np.concatenate([_pad_to(a, longest, pad_value) for a in arrays], axis=0)


def stack(items: Sequence[TensorMap], pad_values: PadValues) -> TensorMap:
    """Concatenate every request's inputs on axis 0, padding ragged ones with their pad value.

    Raises ValueError when requests disagree in a way no pad value covers (see `batch_key`).
    A single request is returned as is (no copy).
    """
    if not items:
        raise ValueError("cannot stack an empty batch")
    if len(items) == 1:
        return items[0]
    names = items[0].keys()
    if any(item.keys() != names for item in items):
        raise ValueError("requests in one batch have different input names")
    return {name: _stack_one(name, [item[name] for item in items], pad_values.get(name)) for name in names}


def split(outputs: TensorMap, counts: Sequence[int]) -> list[TensorMap]:
    """Cut every output on axis 0 into `counts` consecutive pieces, one TensorMap per request.

    Raises ValueError naming the output when its axis 0 is not the total item count: the model
    did not answer one row per item, so no request can be given its share.
    """
    total = sum(counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output '{name}' has shape {list(array.shape)} but the batch had {total} items; "
                "with batching on, every output needs one row per item on axis 0"
            )
    bounds = np.cumsum([0, *counts])
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]
