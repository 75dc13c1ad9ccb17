"""Image classification: encoded image bytes -> one normalised tensor item; logits -> top-k labels.

Decoding is strict about what it accepts (PNG, JPEG, WebP, BMP, GIF) and explicit about what it
changes: every conversion (palette, CMYK, 16-bit, alpha, animation, EXIF rotation) adds a note that
the response carries. Animated images are not refused: the first frame is classified and a note
says so. Anything Pillow cannot read becomes `InvalidInput` whose message tells a damaged file of an
accepted format (by its signature) from another format and from bytes that are no image at all;
oversized images are `PayloadTooLarge`.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge
from service.repository.config import ImageInput
from service.types import FloatArray

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""Pillow format names accepted; Pillow is told to try only these decoders."""
ACCEPTED = "PNG, JPEG, WebP, BMP or GIF"
MAX_PIXELS = 40_000_000
"""Largest width * height decoded (a 40-megapixel photo); checked from the header before decoding, so
a decompression bomb is refused without allocating its pixels. Below Pillow's own MAX_IMAGE_PIXELS."""
MAX_SIDE = 30_000
"""Longest side accepted (a 1 x 40M image fits MAX_PIXELS but is no photo)."""

_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
_SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("PNG", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda h: h.startswith(b"\xff\xd8\xff")),
    ("GIF", lambda h: h.startswith((b"GIF87a", b"GIF89a"))),
    ("WEBP", lambda h: h.startswith(b"RIFF") and h[8:12] == b"WEBP"),
    (
        "BMP",
        lambda h: (
            h.startswith(b"BM") and int.from_bytes(h[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
        ),
    ),
    # common formats we do not decode, so the message can name them
    ("TIFF", lambda h: h.startswith((b"II*\x00", b"MM\x00*"))),
    (
        "HEIC/AVIF",
        lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"),
    ),
    ("ICO", lambda h: h.startswith(b"\x00\x00\x01\x00")),
    ("PSD", lambda h: h.startswith(b"8BPS")),
    ("JPEG 2000", lambda h: h.startswith(b"\x00\x00\x00\x0cjP  ")),
    ("PDF", lambda h: h.startswith(b"%PDF")),
    ("SVG or XML", lambda h: h.lstrip().startswith((b"<svg", b"<?xml"))),
    ("WAV audio", lambda h: h.startswith(b"RIFF") and h[8:12] == b"WAVE"),
    ("FLAC audio", lambda h: h.startswith(b"fLaC")),
    ("OGG audio", lambda h: h.startswith(b"OggS")),
    ("MP3 audio", lambda h: h.startswith(b"ID3")),
)
"""(type, test of the first 64 bytes): what the bytes claim to be, for messages."""
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(slots=True)
class DecodedImage:
    """One image ready for the model: `tensor` is (C, H, W) or (H, W, C) per layout, float32."""

    tensor: FloatArray
    notes: list[str] = field(default_factory=list)


def decode_image(data: bytes, task: ImageInput, *, index: int = 0) -> DecodedImage:
    """Decode, orient, convert, resize and normalise one image for `task` (any image task's input).

    Raises InvalidInput (not an accepted image, corrupt, truncated, zero-size) or PayloadTooLarge
    (more than MAX_PIXELS pixels); `index` names the image in messages.
    """
    where = f"image {index}"
    if not data:
        raise InvalidInput(f"{where} is empty (0 bytes); send a {ACCEPTED} file")
    notes: list[str] = []
    image = _open(data, where, notes)
    image = _to_mode(image, task.channels, notes)
    invert = task.invert
    if invert == "auto":
        invert = light_ground(image)
        if invert:
            notes.append("light ground (from the border): inverted to light strokes on dark")
    if invert:
        image = ImageOps.invert(image)
    if task.autocontrast:
        image = ImageOps.autocontrast(image)
    image = _resize(image, task)
    return DecodedImage(tensor=_normalise(image, task), notes=notes)


def _open(data: bytes, where: str, notes: list[str]) -> Image.Image:
    """Open, check the size from the header, load the first frame, apply EXIF orientation."""
    kind = sniff(data)
    _check_header_size(data, kind, where)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(
            f"{where} has too many pixels to decode safely; the limit is {MAX_PIXELS} pixels"
        ) from exc
    except Exception as exc:  # untrusted bytes: any decoder failure means "not an image we can read"
        raise InvalidInput(_unreadable(where, kind, exc)) from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidInput(
            f"{where} has zero size ({width}x{height} pixels); send an image of at least 1x1 pixels"
        )
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise PayloadTooLarge(
            f"{where} is {width}x{height} = {width * height} pixels; the limit is {MAX_PIXELS} pixels "
            f"and {MAX_SIDE} per side: downscale it first"
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated {image.format} with {frames} frames: classified the first frame only")
    try:
        image.seek(0)
        image.load()
        oriented = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(
            f"{where} has too many pixels to decode safely; the limit is {MAX_PIXELS} pixels"
        ) from exc
    except Exception as exc:  # truncated or corrupt pixel data surfaces only on load()
        raise InvalidInput(
            f"{where} is not a readable image: its {image.format} pixel data is corrupt or truncated "
            f"({_reason(exc)}); send a complete {ACCEPTED} file"
        ) from exc
    if oriented.size != image.size or oriented.tobytes() != image.tobytes():
        notes.append("rotated/flipped upright following its EXIF orientation")
    return oriented


def sniff(data: bytes) -> str | None:
    """The file type named by the first bytes (an accepted format or a known other one), else None."""
    head = data[:64]
    for name, test in _SIGNATURES:
        if test(head):
            return name
    return None


def _check_header_size(data: bytes, kind: str | None, where: str) -> None:
    """Refuse a zero width or height read straight from a PNG, GIF or BMP header.

    Pillow refuses such files with a bare "cannot identify image file"; reading the header ourselves
    lets the message say what is wrong.
    """
    size: tuple[int, int] | None = None
    if kind == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        size = struct.unpack(">II", data[16:24])
    elif kind == "GIF" and len(data) >= 10:
        size = struct.unpack("<HH", data[6:10])
    elif kind == "BMP" and len(data) >= 26 and struct.unpack("<I", data[14:18])[0] >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        size = (abs(width), abs(height))  # a negative height means rows stored top-down
    if size is not None and 0 in size:
        raise InvalidInput(
            f"{where} has zero size ({size[0]}x{size[1]} pixels); send an image of at least 1x1 pixels"
        )


def _unreadable(where: str, kind: str | None, exc: Exception) -> str:
    """Why Pillow could not open the bytes, in the client's terms."""
    if kind in FORMATS:
        # UnidentifiedImageError's "cannot identify image file" adds nothing to "corrupt or truncated"
        detail = "" if isinstance(exc, UnidentifiedImageError) else f" ({_reason(exc)})"
        return (
            f"{where} is not a readable image: it starts like a {kind} file but is corrupt or "
            f"truncated{detail}; send a complete {ACCEPTED} file"
        )
    if kind is not None:
        return (
            f"{where} is not a readable image: it is a {kind} file, which is not accepted; "
            f"convert it to {ACCEPTED}"
        )
    return f"{where} is not a readable image: its bytes are not a {ACCEPTED} file; send one of those"


def _reason(exc: Exception) -> str:
    text = _BUFFER_REPR.sub("", str(exc)).strip() or type(exc).__name__
    return text[:200]


def _to_mode(image: Image.Image, channels: str, notes: list[str]) -> Image.Image:
    """Bring any Pillow mode to 8-bit `channels` ("RGB" or "L"), noting every lossy step."""
    mode = image.mode
    if mode == channels:
        return image
    if mode in _SIXTEEN_BIT or mode == "F":
        notes.append(f"{_mode_name(mode)} image scaled to 8 bits")
        return Image.fromarray(_to_uint8(image), mode="L").convert(channels)
    if mode == "P":
        notes.append("palette image converted to " + channels)
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode not in ("RGB", "L", "RGBA", "LA"):
        notes.append(f"{_mode_name(mode)} image converted to {channels}")
        image = image.convert("RGBA" if "A" in mode else "RGB")
    if image.mode in ("RGBA", "LA"):
        notes.append("transparent pixels composited on white")
        background = Image.new(image.mode, image.size, "white")
        image = Image.alpha_composite(background.convert("RGBA"), image.convert("RGBA"))
    if channels == "L" and image.mode != "L":
        notes.append("colour image converted to grayscale")
    elif channels == "RGB" and image.mode == "L":
        notes.append("grayscale image replicated to RGB")
    return image.convert(channels)


def _mode_name(mode: str) -> str:
    return {
        "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "LAB", "HSV": "HSV", "1": "1-bit", "F": "32-bit float",
    }.get(mode, "16-bit" if mode.startswith("I") else mode)


def _to_uint8(image: Image.Image) -> npt.NDArray[np.uint8]:
    """16-bit or float pixels -> uint8; 16-bit uses the full 0..65535 range, float is taken as 0..1."""
    pixels = np.asarray(image, dtype=np.float64)
    scale = 1.0 if image.mode == "F" else 65535.0
    return (np.clip(pixels / scale, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def light_ground(image: Image.Image) -> bool:
    """True when the image's ground is light, read from its border: the median of the outer ring
    (about 4% of each side, at least one pixel) lies above the middle of the image's own range.

    People draw and photograph digits dark on light (paper, a white canvas) and light on dark (a
    blackboard, MNIST); the border is ground in both, unless strokes run off every edge.
    """
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    height, width = pixels.shape
    ring_h, ring_w = max(1, round(height * 0.04)), max(1, round(width * 0.04))
    mask = np.zeros(pixels.shape, dtype=bool)
    mask[:ring_h, :] = mask[-ring_h:, :] = True
    mask[:, :ring_w] = mask[:, -ring_w:] = True
    ground = float(np.median(pixels[mask]))
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi == lo:  # a blank page is all ground: light when above mid-grey, so it arrives dark like any ground
        return ground > 127.5
    return ground > (lo + hi) / 2


def _crop_to_ink(image: Image.Image) -> Image.Image:
    """The strokes' bounding box (pixels above a quarter of the range), padded to a square with a
    margin so the strokes fill ~20/28 of the side like MNIST's framing; a blank image is kept whole."""
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    lo, hi = float(pixels.min()), float(pixels.max())
    ys, xs = np.nonzero(pixels > lo + (hi - lo) * 0.25) if hi > lo else (np.array([]), np.array([]))
    if len(xs) == 0:
        return image
    left, right, top, bottom = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    side = max(right - left, bottom - top) * 28 / 20
    cx, cy = (left + right) / 2, (top + bottom) / 2
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return image.crop(box)  # outside the image Pillow fills with 0: black ground, as after invert


def _resize(image: Image.Image, task: ImageInput) -> Image.Image:
    height, width = task.size
    if task.resize == "ink":
        image = _crop_to_ink(image)
        return ImageOps.pad(image, (width, height), method=Image.Resampling.BILINEAR, color=0)
    if image.size == (width, height):
        return image
    if task.resize == "center-crop":
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    if task.resize == "pad":
        # black padding: with `invert` the image was inverted already, so black is its background
        return ImageOps.pad(image, (width, height), method=Image.Resampling.BILINEAR, color=0)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _normalise(image: Image.Image, task: ImageInput) -> FloatArray:
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W) -> (H, W, 1)
    mean = np.asarray(task.mean, dtype=np.float32)
    std = np.asarray(task.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    if task.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return np.ascontiguousarray(pixels, dtype=np.float32)
