"""Anomaly detection: an image (decoded like image-classification) -> an autoencoder's reconstruction ->
a reconstruction-error score, compared with the threshold calibrated on normal images.

`score` is the mean squared (or absolute) difference over every input element, in the model's input
space; on request the image as the model saw it, the reconstruction and a per-pixel error heat map
come back as PNGs, drawn in the model's pixel space (mean/std undone).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.errors import InferenceFailed
from service.repository.config import AnomalyDetectionTask
from service.types import FloatArray


def check_shape(inputs: FloatArray, outputs: FloatArray, model_name: str, output_name: str) -> None:
    """The reconstruction must have the input's shape (an autoencoder); else a server-side error naming
    both."""
    if outputs.shape != inputs.shape:
        raise InferenceFailed(
            f"model '{model_name}' output '{output_name}' has shape {list(outputs.shape)} but its input has "
            f"{list(inputs.shape)}; anomaly-detection needs an output of the input's shape (a reconstruction)"
        )


def scores(inputs: FloatArray, outputs: FloatArray, kind: str) -> npt.NDArray[np.float64]:
    """Per-item reconstruction error over all non-batch axes: mean squared ("mse") or absolute ("mae")."""
    diff = outputs.astype(np.float64) - inputs.astype(np.float64)
    per = diff**2 if kind == "mse" else np.abs(diff)
    means: npt.NDArray[np.float64] = per.reshape(len(per), -1).mean(axis=1)
    return means


def to_pixels(item: FloatArray, task: AnomalyDetectionTask) -> npt.NDArray[np.float32]:
    """One (C, H, W) or (H, W, C) model-space item -> (H, W, C) pixels in [0, 1] (normalisation undone)."""
    hwc = item.transpose(1, 2, 0) if task.layout == "NCHW" else item
    mean = np.asarray(task.mean, dtype=np.float32)
    std = np.asarray(task.std, dtype=np.float32)
    pixels: npt.NDArray[np.float32] = np.clip(hwc * std + mean, 0.0, 1.0).astype(np.float32)
    return pixels


def png_base64(pixels: npt.NDArray[np.float32]) -> str:
    """(H, W, 1) or (H, W, 3) in [0, 1] -> base64 PNG (grayscale or RGB)."""
    data = (pixels * 255.0 + 0.5).astype(np.uint8)
    if data.shape[2] == 1:
        image = Image.fromarray(data[:, :, 0], mode="L")
    else:
        image = Image.fromarray(data, mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def heat(error: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(H, W) absolute error in [0, 1] -> (H, W, 3) "hot" colours: black, red, yellow, white."""
    v = np.clip(error, 0.0, 1.0)[:, :, None] * 3.0
    ramps = np.concatenate([v, v - 1.0, v - 2.0], axis=2)  # (H, W, 1) -> (H, W, 3): red, green, blue
    colours: npt.NDArray[np.float32] = np.clip(ramps, 0.0, 1.0).astype(np.float32)
    return colours


def pictures(inputs: FloatArray, outputs: FloatArray,
             task: AnomalyDetectionTask) -> list[tuple[str, str, str]]:
    """Per item: (input, reconstruction, error map) as base64 PNGs."""
    out = []
    for x, r in zip(inputs, outputs, strict=True):
        seen, rebuilt = to_pixels(x, task), to_pixels(r, task)
        error = np.abs(rebuilt - seen).mean(axis=2)  # (H, W, C) -> (H, W)
        out.append((png_base64(seen), png_base64(rebuilt), png_base64(heat(error))))
    return out
