"""Image generation: a request (classes, count, seed) -> noise and class tensors -> a generator's
images -> PNGs (one per image, or one grid).

The noise is drawn with NumPy's PCG64 from the request's seed (a random one when unset, returned),
so the same seed and request give the same images; every check on the request (count, classes,
classes sent to an unconditional model) happens here, before anything is queued.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.errors import InferenceFailed, InvalidInput
from service.repository.config import ImageGenerationTask
from service.tasks.schema import MAX_SEED, GenerationRequest
from service.types import FloatArray

GRID_GAP = 2
"""Pixels between images in a grid (drawn in the ground colour)."""


@dataclass(slots=True)
class Plan:
    """What one request will generate: one row per requested class (one row for unconditional models)."""

    seed: int
    noise: npt.NDArray[np.float32]
    """(items, noise_dim)."""
    classes: npt.NDArray[np.int64] | None
    """(items,) class indices, or None for an unconditional model."""
    names: list[str | None]
    """Per item: the class name (None when unconditional)."""
    rows: int
    columns: int


def plan(task: ImageGenerationTask, request: GenerationRequest, *, model_name: str,
         max_batch_size: int | None) -> Plan:
    """Validate the request against the model and draw its noise; raises InvalidInput saying what is
    accepted."""
    names = task.labels
    if task.label_input is None:
        if request.labels is not None:
            raise InvalidInput(
                f"model '{model_name}' is an unconditional generator: it takes no 'labels'; "
                "send only 'count' and 'seed'"
            )
        indices: list[int] | None = None
    else:
        wanted = request.labels if request.labels is not None else list(range(len(names)))
        indices = [_class_index(label, names, model_name) for label in wanted]
    rows = 1 if indices is None else len(indices)
    total = rows * request.count
    limit = min(task.max_count, max_batch_size) if max_batch_size else task.max_count
    if total > limit:
        per = f"{rows} classes x count {request.count}" if indices is not None else f"count {request.count}"
        raise InvalidInput(f"{per} = {total} images; model '{model_name}' draws at most {limit} per request")
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    rng = np.random.default_rng(seed)
    shape = (total, task.noise_dim)
    noise = rng.standard_normal(shape) if task.noise == "normal" else rng.uniform(-1.0, 1.0, shape)
    classes = None if indices is None else np.repeat(np.asarray(indices, dtype=np.int64), request.count)
    item_names: list[str | None] = [None] * total if classes is None else [names[int(c)] for c in classes]
    return Plan(seed=seed, noise=noise.astype(np.float32), classes=classes, names=item_names, rows=rows,
                columns=request.count)


def _class_index(label: int | str, names: list[str], model_name: str) -> int:
    if isinstance(label, int):
        if 0 <= label < len(names):
            return label
        raise InvalidInput(
            f"label {label} is not a class of model '{model_name}': give an index from 0 to {len(names) - 1} "
            f"or a name ({', '.join(names[:20])})"
        )
    if label in names:
        return names.index(label)
    raise InvalidInput(
        f"label '{label[:40]}' is not a class of model '{model_name}'; "
        f"its classes are {', '.join(names[:20])} "
        f"(by name) or 0 to {len(names) - 1} (by index)"
    )


def to_images(output: FloatArray, task: ImageGenerationTask, *, items: int,
              model_name: str) -> list[npt.NDArray[np.uint8]]:
    """The generator's output -> one uint8 (H, W) or (H, W, 3) image per item, mapped from `value_range`."""
    if output.ndim != 4 or output.shape[0] != items:
        raise InferenceFailed(
            f"model '{model_name}' output '{task.output}' has shape {list(output.shape)}; "
            "image-generation needs "
            f"[{items}, channels, height, width] ({task.layout})"
        )
    hwc = output.transpose(0, 2, 3, 1) if task.layout == "NCHW" else output
    if hwc.shape[3] not in (1, 3):
        raise InferenceFailed(
            f"model '{model_name}' draws {hwc.shape[3]} channels; image-generation takes 1 or 3"
        )
    lo, hi = task.value_range
    pixels = np.clip((hwc.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if task.invert:
        pixels = 1.0 - pixels
    data = (pixels * 255.0 + 0.5).astype(np.uint8)
    return [d[:, :, 0] if d.shape[2] == 1 else d for d in data]


def png(image: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(images: list[npt.NDArray[np.uint8]], *, rows: int, columns: int, ground: int) -> bytes:
    """Images laid out row by row (one row per requested class) with GRID_GAP pixels between them."""
    height, width = images[0].shape[:2]
    channels = () if images[0].ndim == 2 else (3,)
    canvas = np.full(
        (rows * height + (rows - 1) * GRID_GAP, columns * width + (columns - 1) * GRID_GAP, *channels),
        ground, dtype=np.uint8,
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * (height + GRID_GAP), c * (width + GRID_GAP)
        canvas[top: top + height, left: left + width] = image
    return png(canvas)
