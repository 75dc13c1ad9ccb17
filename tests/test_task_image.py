"""Image decoding for the /v1 image-classification task: formats, conversions, refusals, properties."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.repository.config import ImageClassificationTask
from service.tasks.image import MAX_PIXELS, decode_image
from service.tasks.labels import class_scores, rank

GRAY28 = ImageClassificationTask(input="image", output="logits", size=(28, 28), channels="L")
RGB32 = ImageClassificationTask(input="x", output="y", size=(32, 32), channels="RGB", mean=[0.5], std=[0.5])


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (the pixel data is a 1x1 image's): a bomb's header."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_every_accepted_format_decodes_to_the_model_shape(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30), (255, 255, 255)), fmt)
    decoded = decode_image(data, GRAY28)
    assert decoded.tensor.shape == (1, 28, 28) and decoded.tensor.dtype == np.float32
    assert decoded.tensor.min() > 0.9  # white stays white through every codec


def test_rgb_nhwc_layout_and_normalisation() -> None:
    task = RGB32.model_copy(update={"layout": "NHWC", "mean": [0.0, 0.5, 1.0], "std": [1.0, 0.5, 0.25]})
    decoded = decode_image(encode(Image.new("RGB", (32, 32), (255, 0, 255))), task)
    assert decoded.tensor.shape == (32, 32, 3)
    np.testing.assert_allclose(decoded.tensor[0, 0], [1.0, -1.0, 0.0], atol=1e-6)
    assert decoded.notes == []


def test_invert_turns_dark_strokes_on_paper_into_light_on_dark() -> None:
    task = GRAY28.model_copy(update={"invert": True})
    assert decode_image(encode(Image.new("L", (28, 28), 255)), task).tensor.max() == 0.0


def test_autocontrast_stretches_a_dim_photo_to_the_full_range() -> None:
    image = Image.new("L", (28, 28), 100)
    image.paste(120, (0, 0, 14, 28))
    tensor = decode_image(encode(image), GRAY28.model_copy(update={"autocontrast": True})).tensor
    assert tensor.min() == 0.0 and tensor.max() == 1.0


@pytest.mark.parametrize("mode", ["stretch", "center-crop", "pad"])
def test_resize_modes_reach_the_configured_size(mode: str) -> None:
    task = RGB32.model_copy(update={"resize": mode, "size": (16, 24)})
    image = Image.new("RGB", (100, 20), (255, 255, 255))
    tensor = decode_image(encode(image), task).tensor
    assert tensor.shape == (3, 16, 24)
    if mode == "pad":  # black bars above and below a wide image
        assert tensor[:, 0, :].max() == -1.0 and tensor[:, 8, 12].min() == 1.0
    else:
        assert tensor.min() == 1.0


def test_exif_orientation_is_honoured_and_noted() -> None:
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    task = GRAY28.model_copy(update={"size": (40, 20)})  # (height, width) of the upright image
    decoded = decode_image(data, task)
    assert any("EXIF" in note for note in decoded.notes)
    assert decoded.tensor[0, :20, :].mean() > 0.9 and decoded.tensor[0, 20:, :].mean() < 0.1  # white on top


def test_animated_gif_uses_the_first_frame_and_says_so() -> None:
    frames = [Image.new("L", (28, 28), 255), Image.new("L", (28, 28), 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(buffer.getvalue(), GRAY28)
    assert decoded.tensor.min() > 0.99
    assert any("first frame" in note and "2 frames" in note for note in decoded.notes)


@pytest.mark.parametrize(
    ("image", "fmt", "words"),
    [
        (Image.new("CMYK", (28, 28), (0, 0, 0, 0)), "JPEG", "CMYK"),
        (Image.fromarray(np.full((28, 28), 65535, dtype=np.uint16)), "PNG", "16-bit"),
        (Image.new("P", (28, 28), 3), "PNG", "palette"),
        (Image.new("LA", (28, 28), (0, 0)), "PNG", "transparent"),
        (Image.new("RGBA", (28, 28), (0, 0, 0, 0)), "WEBP", "transparent"),
    ],
    ids=["cmyk", "16-bit", "palette", "la", "rgba"],
)
def test_unusual_modes_are_converted_and_noted(image: Image.Image, fmt: str, words: str) -> None:
    decoded = decode_image(encode(image, fmt), GRAY28)
    assert decoded.tensor.shape == (1, 28, 28)
    assert any(words in note for note in decoded.notes), decoded.notes
    assert decoded.tensor.min() >= 0.0 and decoded.tensor.max() <= 1.0


def test_sixteen_bit_white_stays_white() -> None:
    image = Image.fromarray(np.full((28, 28), 65535, dtype=np.uint16))
    assert decode_image(encode(image), GRAY28).tensor.min() == 1.0


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "image 0 is empty"),
        (b"hello, this is not an image at all", "its bytes are not a PNG, JPEG, WebP, BMP or GIF file"),
        (encode(Image.new("RGB", (64, 64), (9, 9, 9)))[:-60], "PNG pixel data is corrupt or truncated"),
        (encode(Image.new("L", (28, 28)))[:40], "starts like a PNG file but is corrupt or truncated"),
        (encode(Image.new("RGB", (64, 64)), "JPEG")[:300], "corrupt or truncated"),
        (b"GIF89a" + b"\xff" * 10, "starts like a GIF file but is corrupt or truncated"),
        (
            encode(Image.new("RGB", (8, 8)), "TIFF"),
            "it is a TIFF file, which is not accepted; convert it to PNG",
        ),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "HEIC/AVIF file, which is not accepted"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG or XML file, which is not accepted"),
        (png_with_header(0, 10), "zero size \\(0x10 pixels\\)"),
        (bmp_with_size(7, 0), "zero size \\(7x0 pixels\\)"),
        (b"GIF89a\x00\x00\x05\x00\x00\x00\x00;", "zero size \\(0x5 pixels\\)"),
    ],
    ids=[
        "empty", "text", "truncated-pixels", "truncated-header", "truncated-jpeg", "garbage-gif", "tiff",
        "heic", "svg", "zero-width-png", "zero-height-bmp", "zero-gif",
    ],
)
def test_bad_bytes_are_invalid_input_naming_the_problem(data: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        decode_image(data, GRAY28)


def test_an_animated_webp_uses_the_first_frame_and_says_so() -> None:
    frames = [Image.new("RGB", (28, 28), (255, 255, 255)), Image.new("RGB", (28, 28), (0, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True
    )
    decoded = decode_image(buffer.getvalue(), GRAY28)
    assert decoded.tensor.min() > 0.99 and any("WEBP with 2 frames" in note for note in decoded.notes)


@pytest.mark.parametrize("side", [8000, 20000])  # over our limit; over Pillow's own bomb limit
def test_decompression_bombs_are_refused_from_the_header(side: int) -> None:
    assert side * side > MAX_PIXELS
    with pytest.raises(PayloadTooLarge, match="limit"):
        decode_image(png_with_header(side, side), GRAY28)


def test_scores_rank_best_first_with_every_score_on_request() -> None:
    probs = class_scores(np.array([[0.0, 2.0, 1.0]], dtype=np.float32), items=1, activation="softmax")
    ranked = rank(probs[0], ["a", "b"], top_k=2, return_all=True)
    assert [name for name, _ in ranked.top] == ["b", "2"]  # a class without a name is named by index
    assert ranked.all_scores is not None and sum(ranked.all_scores.values()) == pytest.approx(1.0)


# ---- properties ---------------------------------------------------------------------------------------

ALLOWED = (InvalidInput, UnsupportedMediaType, PayloadTooLarge)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_input_errors(data: bytes) -> None:
    try:
        decoded = decode_image(data, GRAY28)
    except ALLOWED:
        return
    assert decoded.tensor.shape == (1, 28, 28) and np.all(np.isfinite(decoded.tensor))


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "BMP", "GIF"]))
    data = bytearray(
        encode(Image.new("RGB", (draw(st.integers(1, 40)), draw(st.integers(1, 40))), (200, 10, 90)), fmt)
    )
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@PROPERTY
@given(damaged_images())
def test_damaged_real_images_raise_only_input_errors(data: bytes) -> None:
    try:
        decoded = decode_image(data, GRAY28)
    except ALLOWED:
        return
    assert decoded.tensor.shape == (1, 28, 28) and np.all(np.isfinite(decoded.tensor))


@PROPERTY
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "LA", "1", "I;16"]),
    fmt=st.sampled_from(["PNG", "BMP", "GIF", "WEBP", "JPEG"]),
    channels=st.sampled_from(["RGB", "L"]),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    resize=st.sampled_from(["stretch", "center-crop", "pad"]),
    seed=st.integers(0, 2**16),
)
def test_valid_images_decode_to_shape_dtype_and_range(
    width: int, height: int, mode: str, fmt: str, channels: str, layout: str, resize: str, seed: int
) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    if fmt == "JPEG" or (fmt in ("BMP", "GIF", "WEBP") and mode in ("LA", "I;16")):
        image = image.convert("RGB")
    task = ImageClassificationTask(input="x", output="y", size=(20, 12), channels=channels, layout=layout,
                                   resize=resize)
    tensor = decode_image(encode(image, fmt), task).tensor
    c = 3 if channels == "RGB" else 1
    assert tensor.shape == ((c, 20, 12) if layout == "NCHW" else (20, 12, c))
    assert tensor.dtype == np.float32 and tensor.min() >= 0.0 and tensor.max() <= 1.0


# ---- polarity and framing: inputs as people make them --------------------------------------------


def _digit_canvas(size: tuple[int, int], box: tuple[int, int, int, int], *, ink: int, ground: int) -> bytes:
    """A filled rectangle (the 'strokes') of `ink` at `box` on a `ground` canvas of `size` (width, height)."""
    image = Image.new("L", size, ground)
    image.paste(ink, box)
    return encode(image)


AUTO = GRAY28.model_copy(update={"invert": "auto"})


@pytest.mark.parametrize(("ink", "ground"), [(0, 255), (40, 200), (255, 0), (220, 30)])
def test_auto_polarity_reads_the_ground_from_the_border(ink: int, ground: int) -> None:
    """Dark on light and light on dark reach the model the same way: strokes light, ground dark."""
    decoded = decode_image(_digit_canvas((28, 28), (10, 6, 18, 22), ink=ink, ground=ground), AUTO)
    strokes, background = decoded.tensor[0, 14, 14], decoded.tensor[0, 2, 2]
    assert strokes > background
    assert ("inverted" in " ".join(decoded.notes)) == (ground > ink), decoded.notes


def test_fixed_polarity_is_left_alone() -> None:
    light_on_dark = _digit_canvas((28, 28), (10, 6, 18, 22), ink=255, ground=0)
    fixed = decode_image(light_on_dark, GRAY28.model_copy(update={"invert": True}))
    assert fixed.tensor[0, 14, 14] < fixed.tensor[0, 2, 2], "invert: true inverts whatever comes"
    assert decode_image(light_on_dark, GRAY28).tensor[0, 14, 14] == 1.0 and fixed.notes == []


@pytest.mark.parametrize("size", [(28, 28), (100, 100), (160, 64), (64, 160)])
def test_ink_resize_centres_and_frames_the_strokes(size: tuple[int, int]) -> None:
    """Wherever the strokes sit on a canvas of any shape, they arrive centred, ~20 of 28 pixels tall."""
    width, height = size
    box_w, box_h = max(4, width // 8), max(10, height // 4)
    left, top = width - box_w - 2, 1  # far off-centre: top-right corner
    decoded = decode_image(_digit_canvas(size, (left, top, left + box_w, top + box_h), ink=0, ground=255),
                           AUTO.model_copy(update={"resize": "ink"}))
    rows, cols = np.nonzero(decoded.tensor[0] > 0.5)
    longest = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    assert longest in range(19, 22), "the strokes' longer side fills MNIST's 20-pixel box"
    assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 13.5) <= 1


def test_ink_resize_keeps_a_blank_page_blank() -> None:
    decoded = decode_image(encode(Image.new("L", (50, 30), 255)), AUTO.model_copy(update={"resize": "ink"}))
    assert decoded.tensor.shape == (1, 28, 28) and decoded.tensor.max() == 0.0
