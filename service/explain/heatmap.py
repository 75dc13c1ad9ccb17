"""Attribution maps as pictures: the image in grey, positive attributions in red, negative in blue."""

from __future__ import annotations

import base64
import io

import numpy as np
import numpy.typing as npt
from PIL import Image

MAX_SIDE = 1024
"""Longest side of a heatmap PNG; larger images are scaled down first."""
POSITIVE = np.array([220.0, 30.0, 30.0])
NEGATIVE = np.array([30.0, 90.0, 230.0])
OPACITY = 0.85
"""Opacity of the colour where |attribution| is largest."""


def overlay(picture: Image.Image, values: npt.NDArray[np.float64]) -> Image.Image:
    """`values` (H, W) at the picture's size, coloured over a lightened grey copy of the picture."""
    if max(picture.size) > MAX_SIDE:
        scale = MAX_SIDE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        values = np.asarray(
            Image.fromarray(values.astype(np.float32), mode="F").resize(size), dtype=np.float64
        )
        picture = picture.resize(size)
    grey = np.asarray(picture.convert("L"), dtype=np.float64) / 255.0
    base = (0.25 + 0.75 * grey)[..., None] * 255.0  # (H, W) -> (H, W, 1): lightened so colour shows
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    strength = values / peak if peak > 0 else np.zeros_like(values)
    colour = np.where(strength[..., None] >= 0, POSITIVE, NEGATIVE)  # (H, W, 3)
    alpha = (OPACITY * np.abs(strength))[..., None]
    mixed = base * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def overlay_png(picture: Image.Image, values: npt.NDArray[np.float64]) -> str:
    """`overlay` as a base64 PNG."""
    buffer = io.BytesIO()
    overlay(picture, values).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
