"""Explain an image classification: grid cells of the model input are the features.

A removed cell takes the baseline's pixels: a strong Gaussian blur of the model input (`blur`: it
keeps colours and brightness, it only takes away shape; the default for photos) or black after the
task's inversion (`black`: the default for models with `invert: true`, which were trained on light
strokes on a dark ground where black means "nothing drawn here"). The per-cell attributions become a
per-pixel map at the model's size, the same map at the image's size (undoing the task's resize) and
a heatmap PNG over the image.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidInput
from service.explain import heatmap, options
from service.explain.evaluate import attribute_class
from service.explain.kernelshap import BoolArray, Scores
from service.explain.schema import Baseline, ExplainOptions, ImageExplanation
from service.repository.config import ImageClassificationTask
from service.repository.registry import LoadedModel
from service.tasks import image, labels
from service.tasks.pipeline import Payload, cast
from service.tasks.schema import LabelScore
from service.types import FloatArray, TensorMap

IntArray = npt.NDArray[np.int64]
METHODS = ("kernel-shap", "occlusion")
BASELINES = ("blur", "black")
DEFAULT_METHOD = "occlusion"
"""Occlusion by default: on the demo digits it ranked pixels as faithfully as KernelSHAP at 200
evaluations (deletion test, docs/explanations.md) with 51 evaluations instead of 200."""
DEFAULT_BUDGET = 200
"""KernelSHAP evaluations by default, about 4 per cell: 49 cells of a 28x28 digit -> 200 copies
(at 2 per cell the ranking was clearly worse in the deletion test)."""
CELL_PX = 4
MAX_CELLS_PER_SIDE = 12
MAX_MAP_PIXELS = 512 * 512
"""Larger images get no per-pixel map at their own size in the JSON (the heatmap still shows it)."""


def grid(height: int, width: int) -> tuple[IntArray, int]:
    """(H, W) cell index per pixel and the number of cells: cells of about CELL_PX pixels."""
    rows = int(np.clip(round(height / CELL_PX), 1, MAX_CELLS_PER_SIDE))
    cols = int(np.clip(round(width / CELL_PX), 1, MAX_CELLS_PER_SIDE))
    row_of = np.minimum(np.arange(height) * rows // height, rows - 1)
    col_of = np.minimum(np.arange(width) * cols // width, cols - 1)
    return row_of[:, None] * cols + col_of[None, :], rows * cols


def blur(pixels: FloatArray, sigma: float) -> FloatArray:
    """Separable Gaussian blur of an (H, W, C) array, edges reflected."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = pixels.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = sum(
            taps[k] * np.take(padded, range(k, k + out.shape[axis]), axis=axis) for k in range(taps.size)
        )
    return out.astype(np.float32)


def _hwc(tensor: FloatArray, task: ImageClassificationTask) -> FloatArray:
    return tensor.transpose(1, 2, 0) if task.layout == "NCHW" else tensor  # (C, H, W) -> (H, W, C)


def _baseline(tensor: FloatArray, task: ImageClassificationTask, kind: str) -> tuple[FloatArray, str]:
    pixels = _hwc(tensor, task)
    if kind == "black":
        mean, std = np.asarray(task.mean, np.float32), np.asarray(task.std, np.float32)
        base = np.broadcast_to((0.0 - mean) / std, pixels.shape).astype(np.float32)
        words = "black (pixel value 0 after the task's inversion, normalised)"
    else:
        sigma = max(task.size) / 8
        base = blur(pixels, sigma)
        words = f"Gaussian blur (sigma {sigma:g} px) of the model input"
    if task.layout == "NCHW":
        base = base.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return np.ascontiguousarray(base), words


async def explain_image(model: LoadedModel, payload: Payload, opts: ExplainOptions, *,
                        timeout_s: float) -> ImageExplanation:
    task = model.config.task
    assert isinstance(task, ImageClassificationTask)
    if len(payload.blobs) != 1:
        raise InvalidInput(f"explain takes exactly one image per request; got {len(payload.blobs)}")
    data = payload.blobs[0]
    decoded = await run_in_threadpool(image.decode_image, data, task)
    chosen = options.method(opts, task=task.type, allowed=METHODS, default=DEFAULT_METHOD)
    kind = options.baseline(opts, task=task.type, allowed=BASELINES if not task.invert else BASELINES[::-1])
    x = decoded.tensor
    base, words = _baseline(x, task, kind)
    cells, count = grid(*task.size)
    plan = options.plan(chosen, opts, features=count, noun="cells", default_budget=DEFAULT_BUDGET)

    def build(masks: BoolArray) -> TensorMap:
        keep = masks[:, cells]  # (n, F) -> (n, H, W)
        keep = keep[:, None] if task.layout == "NCHW" else keep[..., None]
        copies = np.where(keep, x[None], base[None])  # (n, C, H, W) or (n, H, W, C)
        return {task.input: cast(model.config, task.input, copies.astype(np.float32))}

    names = task.labels or model.config.labels
    result = await attribute_class(model, plan, build, opts, output_name=task.output, names=names,
                                   activation="softmax" if task.logits else "none", timeout_s=timeout_s)
    probs, target, phi, efficiency = result.probs, result.target, result.phi, result.efficiency
    scores: Scores = probs[:, target]
    pixels_per_cell = np.bincount(cells.ravel(), minlength=count)
    model_map = (phi / pixels_per_cell)[cells]  # (H, W): each cell's value spread over its pixels
    image_size, image_map, png = await run_in_threadpool(_render, data, model_map, task)
    label = labels.label_names(names, probs.shape[1])[target]
    ranked = labels.rank(probs[0], names, top_k=task.top_k, return_all=False)
    return ImageExplanation(
        model=model.name, version=model.version, task=task.type, method=plan.method,
        explained=f"probability of label '{label}'" if task.logits else f"score of label '{label}'",
        target=label, score=float(scores[0]),
        baseline=Baseline(kind=kind, description=words, score=float(scores[1])),
        evaluations=int(plan.coalitions.masks.shape[0]), seed=opts.seed, efficiency=efficiency,
        prediction=[LabelScore(label=n, score=s) for n, s in ranked.top],
        segments=count, size=task.size, attributions=_rounded(model_map), image_size=image_size,
        image_attributions=_rounded(image_map) if image_map is not None else None,
        heatmap_png=png,
    )


def _rounded(values: Scores) -> list[list[float]]:
    return [[float(f"{v:.6g}") for v in row] for row in values.tolist()]


def _render(
    data: bytes, model_map: Scores, task: ImageClassificationTask
) -> tuple[tuple[int, int], Scores | None, str]:
    """(image height, width), the map at the image's size (None over MAX_MAP_PIXELS), the heatmap PNG.

    Large images are scaled to the heatmap's size first, so a 40-megapixel photo never gets a
    40-megapixel float map.
    """
    opened = Image.open(io.BytesIO(data), formats=image.FORMATS)  # decode_image accepted these bytes
    opened.seek(0)
    picture = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = picture.size
    scale = min(1.0, heatmap.MAX_SIDE / max(width, height))
    if scale < 1.0:
        picture = picture.resize((max(1, round(width * scale)), max(1, round(height * scale))))
    shown_map = to_image_size(model_map, (picture.height, picture.width), task)
    image_map = shown_map if scale == 1.0 and width * height <= MAX_MAP_PIXELS else None
    return (height, width), image_map, heatmap.overlay_png(picture, shown_map)


def to_image_size(model_map: Scores, size: tuple[int, int], task: ImageClassificationTask) -> Scores:
    """Undo the task's resize: the map of the model input laid over the image as sent."""
    height, width = size
    th, tw = task.size
    if (height, width) == (th, tw):
        return model_map
    layer = Image.fromarray(model_map.astype(np.float32), mode="F")
    if task.resize == "stretch" or width * th == height * tw:
        return np.asarray(layer.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)
    out = np.zeros((height, width))
    if task.resize == "center-crop":  # ImageOps.fit, centred: the model saw a crop of the image
        ratio = tw / th
        crop_w, crop_h = (height * ratio, height) if width / height > ratio else (width, width / ratio)
        left, top = round((width - crop_w) / 2), round((height - crop_h) / 2)
        inner = layer.resize((round(crop_w), round(crop_h)), Image.Resampling.BILINEAR)
        part = np.asarray(inner, dtype=np.float64)[: height - top, : width - left]
        out[top : top + part.shape[0], left : left + part.shape[1]] = part
        return out
    # pad (ImageOps.pad -> contain): the image fills a centred box of the model input
    if width / height > tw / th:
        box_w, box_h = tw, round(height / width * tw)
    else:
        box_w, box_h = round(width / height * th), th
    x0, y0 = round((tw - box_w) / 2), round((th - box_h) / 2)
    inner = layer.crop((x0, y0, x0 + box_w, y0 + box_h))
    return np.asarray(inner.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)
