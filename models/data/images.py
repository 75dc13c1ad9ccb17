"""28x28 digit images: real handwriting (scikit-learn's digits) plus digits rendered from system fonts.

The held-out set is real handwriting only: scikit-learn's bundled UCI digits, 1,797 scans that were
reduced to 8x8 counts of "on" pixels in 4x4 blocks of a 32x32 bitmap (values 0..16). We bring them to
MNIST's framing (light strokes on dark ground, the digit in the central 20x20 of 28x28, [0, 1]).
Font digits go through the same pipeline (render, binarise at 32x32, count 4x4 blocks -> 8x8,
upscale), so their statistics match the held-out set instead of being crisp 28x28 glyphs.
Every image is min-max stretched, as the server's `autocontrast` does to requests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

SIZE = 28
"""Model input side (MNIST)."""
BOX = 20
"""Side of the box the digit is scaled into, centred in SIZE x SIZE (MNIST's framing)."""
SPLIT_SEED = 20_240_601
"""Fixed seed of the train/held-out split, independent of --seed, so every build is scored alike."""
HELDOUT_FRACTION = 0.25
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
DIGITS = [str(d) for d in range(10)]

Floats = npt.NDArray[np.float32]


@dataclass(slots=True)
class ImageData:
    """Images (N, 1, 28, 28) float32 in [0, 1] (not normalised) and int64 labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    """Held-out: real images only."""
    test_y: Tensor
    labels: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    """Provenance: where the data came from and how much of it."""


def upscale_counts(counts: npt.NDArray[Any]) -> Floats:
    """(N, 8, 8) block counts 0..16 -> (N, 28, 28) in [0, 1], bicubic into the central 20x20."""
    x = torch.as_tensor(np.asarray(counts, dtype=np.float32) / 16.0).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)
    x = F.interpolate(x, size=(BOX, BOX), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    pad = (SIZE - BOX) // 2
    x = F.pad(x, (pad, SIZE - BOX - pad, pad, SIZE - BOX - pad))  # (N, 1, 20, 20) -> (N, 1, 28, 28)
    return stretch(x.squeeze(1).numpy())


def stretch(images: Floats) -> Floats:
    """Per-image min-max to [0, 1] (the server's autocontrast); blank images stay blank."""
    flat = images.reshape(len(images), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    scale = np.where(hi > lo, hi - lo, 1.0)
    out = (flat - lo[:, None]) / scale[:, None]
    return out.reshape(images.shape).astype(np.float32)


# ---- fonts ---------------------------------------------------------------------------------------


def find_fonts(dirs: tuple[Path, ...] = FONT_DIRS) -> list[Path]:
    """TrueType/OpenType fonts on the machine that draw ten distinct digits (drops symbol fonts)."""
    paths = sorted(
        p for d in dirs if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")
    )
    usable = []
    for path in paths:
        try:
            font = ImageFont.truetype(str(path), 24)
            masks = {bytes(font.getmask(d)) for d in DIGITS}
        except OSError:
            continue
        if len(masks) == 10:
            usable.append(path)
    return usable


def _render_one(font: ImageFont.FreeTypeFont, digit: str, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """One font digit, randomly deformed, as 8x8 counts (0..16) like the UCI preprocessing."""
    canvas = Image.new("L", (128, 128), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 5))
    draw.text((64, 64), digit, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    # Affine: rotation, shear, anisotropic scale; Image.transform wants the output->input matrix.
    angle = np.deg2rad(rng.uniform(-15, 15))
    shear = rng.uniform(-0.35, 0.35)
    sx, sy = rng.uniform(0.75, 1.25), rng.uniform(0.9, 1.1)
    fwd = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.array(
        [[sx, shear], [0.0, sy]]
    )
    inv = np.linalg.inv(fwd)
    offset = np.array([64.0, 64.0]) - inv @ np.array([64.0, 64.0])
    canvas = canvas.transform(
        canvas.size,
        Image.Transform.AFFINE,
        (*inv[0], offset[0], *inv[1], offset[1]),
        Image.Resampling.BILINEAR,
    )
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    return _glyph_counts(canvas, rng)


def _glyph_counts(canvas: Image.Image, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Ink on a 128x128 canvas -> 8x8 counts (0..16): crop, size-normalise to 32x32, binarise, count 4x4."""
    box = canvas.point(lambda v: 255 if v > 96 else 0).getbbox()
    if box is None:
        return np.zeros((8, 8), dtype=np.int64)
    glyph = canvas.crop(box)
    # Size-normalise like the UCI scans, which fill most of the 32x32 box in both directions: height
    # to ~32, width between the glyph's own aspect and the full box.
    w, h = glyph.size
    height = 32 - int(rng.integers(0, 3))
    width = w * height / h
    width = min(32.0, width + rng.uniform(0.3, 1.0) * (32.0 - width))
    glyph = glyph.resize((max(1, round(width)), height), Image.Resampling.BILINEAR)
    bitmap = Image.new("L", (32, 32), 0)
    left = (32 - glyph.width) // 2 + int(rng.integers(-1, 2))
    top = (32 - glyph.height) // 2 + int(rng.integers(-1, 2))
    bitmap.paste(glyph, (left, top))
    pixels = np.asarray(bitmap, dtype=np.float32) + rng.normal(0.0, 20.0, (32, 32))
    on = (pixels > 128).astype(np.int64)
    return on.reshape(8, 4, 8, 4).sum(axis=(1, 3))  # (32, 32) -> (8, 8) counts of 4x4 blocks


def render_font_digits(
    *, per_class: int, seed: int, fonts: list[Path]
) -> tuple[Floats, npt.NDArray[np.int64]]:
    """`per_class` rendered images of each digit, cycling through `fonts`: (10*per_class, 28, 28), labels."""
    if not fonts or per_class <= 0:
        return np.zeros((0, SIZE, SIZE), dtype=np.float32), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    loaded = [ImageFont.truetype(str(p), 80) for p in fonts]
    counts, labels = [], []
    for i in range(per_class):
        for label, digit in enumerate(DIGITS):
            counts.append(_render_one(loaded[(i * 10 + label) % len(loaded)], digit, rng))
            labels.append(label)
    return upscale_counts(np.stack(counts)), np.asarray(labels, dtype=np.int64)


# ---- datasets ------------------------------------------------------------------------------------


def real_digits() -> tuple[Floats, npt.NDArray[np.int64]]:
    """scikit-learn's 1,797 handwritten digits as (N, 28, 28) in [0, 1] and labels."""
    bunch = load_digits()
    return upscale_counts(bunch.images), bunch.target.astype(np.int64)


def digits(*, seed: int, fonts_per_class: int, real_fraction: float = 1.0) -> ImageData:
    """Real train split (+ `fonts_per_class` rendered digits per class) and the real held-out split.

    `real_fraction` < 1 keeps only part of the real train split (quick builds); held-out stays whole.
    """
    x, y = real_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    if real_fraction < 1.0:
        keep_count = max(10, int(len(train_x) * real_fraction))
        keep = np.random.default_rng(seed).permutation(len(train_x))[:keep_count]
        train_x, train_y = train_x[keep], train_y[keep]
    fonts = find_fonts()
    font_x, font_y = render_font_digits(per_class=fonts_per_class, seed=seed, fonts=fonts)
    return ImageData(
        train_x=torch.from_numpy(np.concatenate([train_x, font_x])).unsqueeze(1),
        train_y=torch.from_numpy(np.concatenate([train_y, font_y])),
        test_x=torch.from_numpy(test_x).unsqueeze(1),
        test_y=torch.from_numpy(test_y),
        labels=list(DIGITS),
        source={
            "train": "scikit-learn load_digits (UCI optdigits, 8x8 upscaled) train split"
            f" + {len(font_y)} font-rendered digits",
            "heldout": "scikit-learn load_digits held-out split (real handwriting only)",
            "split": f"stratified {HELDOUT_FRACTION:.0%} held out, random_state={SPLIT_SEED}",
            "real_train": len(train_y),
            "font_train": len(font_y),
            "fonts": len(fonts) if fonts_per_class > 0 else 0,
            "heldout_size": len(test_y),
        },
    )


def load_folder(path: Path, *, seed: int) -> ImageData:
    """An image folder with one sub-folder per class (labels = sorted folder names).

    Each image is brought to the model input exactly as the server brings a request to the published
    image models (grayscale, invert when the ground is light, autocontrast, crop to the strokes, pad to
    28x28), by the server's own decoder.
    """
    from service.repository.config import ImageClassificationTask
    from service.tasks.image import decode_image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{path}: expected one sub-folder per class (at least 2), found {classes}")
    task = ImageClassificationTask(
        input="image",
        output="logits",
        size=(SIZE, SIZE),
        channels="L",
        resize="ink",
        invert="auto",
        autocontrast=True,
    )
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(p for p in (path / name).iterdir() if p.is_file() and not p.name.startswith(".")):
            images.append(decode_image(file.read_bytes(), task).tensor[0])
            labels.append(label)
    x, y = np.stack(images).astype(np.float32), np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    stratify = y if counts.min() >= 2 else None
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=stratify, random_state=SPLIT_SEED
    )
    return ImageData(
        train_x=torch.from_numpy(train_x).unsqueeze(1),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x).unsqueeze(1),
        test_y=torch.from_numpy(test_y),
        labels=classes,
        source={
            "train": f"image folder {path} ({len(classes)} classes)",
            "heldout": f"image folder {path}, stratified {HELDOUT_FRACTION:.0%} held out,"
            f" random_state={SPLIT_SEED}",
            "real_train": len(train_y),
            "heldout_size": len(test_y),
        },
    )


def to_png(image: Tensor | Floats, *, invert: bool = True) -> bytes:
    """A (1, 28, 28) or (28, 28) [0, 1] image as PNG bytes, dark on light by default (as people send)."""
    pixels = np.asarray(image, dtype=np.float32).reshape(SIZE, SIZE)
    if invert:
        pixels = 1.0 - pixels
    buf = io.BytesIO()
    Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


# ---- out-of-distribution sets (autoencoder evaluation; never trained on) --------------------------

LETTERS = "ACEFHJKLMNPRTUVWXYacdefhjkmnprtuvwxy"
"""Letters rendered for the OOD set: the alphabet without the usual digit look-alikes (O o D Q: 0,
I i l: 1, Z z: 2, S s: 5, G b: 6, B: 8, g q: 9), which would measure handwriting ambiguity, not novelty."""
OOD_SETS = ("letters", "strokes", "noise", "inverted", "blank")


def render_font_letters(*, count: int, seed: int, fonts: list[Path]) -> Floats:
    """`count` letters from LETTERS through the same render -> 8x8 counts -> upscale pipeline as the
    digits."""
    if not fonts or count <= 0:
        return np.zeros((0, SIZE, SIZE), dtype=np.float32)
    rng = np.random.default_rng(seed)
    loaded = [ImageFont.truetype(str(p), 80) for p in fonts]
    counts = [
        _render_one(loaded[i % len(loaded)], LETTERS[int(rng.integers(len(LETTERS)))], rng)
        for i in range(count)
    ]
    return upscale_counts(np.stack(counts))


def random_strokes(*, count: int, seed: int) -> Floats:
    """`count` scribbles of 1-4 random lines and arcs, size-normalised and counted like the digits."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        canvas = Image.new("L", (128, 128), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 5))):
            width = int(rng.integers(4, 14))
            if rng.random() < 0.5:
                points = [tuple(int(v) for v in rng.integers(16, 112, 2)) for _ in range(2)]
                draw.line(points, fill=255, width=width)
            else:
                x0, y0 = (int(v) for v in rng.integers(8, 64, 2))
                x1, y1 = x0 + int(rng.integers(24, 64)), y0 + int(rng.integers(24, 64))
                start = float(rng.uniform(0, 360))
                draw.arc((x0, y0, x1, y1), start, start + float(rng.uniform(60, 200)), fill=255, width=width)
        out.append(_glyph_counts(canvas, rng))
    return upscale_counts(np.stack(out))


def noise_images(*, count: int, seed: int) -> Floats:
    """Half white noise, half blurred (blobby) noise, stretched like every other image."""
    rng = np.random.default_rng(seed)
    white = rng.random((count, SIZE, SIZE)).astype(np.float32)
    blurred = torch.as_tensor(rng.random((count, 1, SIZE // 4, SIZE // 4)).astype(np.float32))
    blurred = (
        F.interpolate(blurred, size=(SIZE, SIZE), mode="bicubic", align_corners=False).squeeze(1).numpy()
    )
    keep = np.arange(count) % 2 == 0
    return stretch(np.where(keep[:, None, None], white, blurred).astype(np.float32))


def ood_sets(*, normal: Floats, seed: int) -> dict[str, Floats]:
    """One out-of-distribution set per OOD_SETS entry, each as large as `normal` (held-out real digits).

    letters: from the fonts; strokes: random scribbles; noise; inverted: `normal` with dark strokes on
    light ground; blank: empty pages (what a uniform image becomes after the server's autocontrast).
    """
    count = len(normal)
    return {
        "letters": render_font_letters(count=count, seed=seed + 101, fonts=find_fonts()),
        "strokes": random_strokes(count=count, seed=seed + 102),
        "noise": noise_images(count=count, seed=seed + 103),
        "inverted": stretch(1.0 - normal),
        "blank": np.zeros_like(normal),
    }
