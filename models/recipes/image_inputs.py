"""Measure a served digit classifier on inputs as people make them, through the server's own decoder.

    python -m models.recipes.image_inputs --repo /tmp/demo_full [--model cnn]

The 450 held-out real digits (never trained on) are rendered as PNG files five ways: dark on light
(paper, a white canvas), light on dark (a blackboard, MNIST), each of those off-centre in a larger
square crop, and in a non-square (wide or tall) crop. Each set goes through `service.tasks.image.decode_image`
with several task variants (the published one, `invert: auto`, `resize: ink`) and the model's ONNX graph;
the table gives the accuracy of each variant on each set (docs/tasks.md shows it).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from sklearn.model_selection import train_test_split

from models.data.images import HELDOUT_FRACTION, SPLIT_SEED, real_digits
from service.repository.config import ImageClassificationTask, load_config
from service.tasks.image import decode_image


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The image families' held-out split: (450, 28, 28) light-on-dark digits in [0, 1] and labels."""
    x, y = real_digits()
    _, test_x, _, test_y = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return test_x, test_y


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _placed(digit: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The digit scaled 2x (a 56 px crop, ink ~40 px) at a random position on a canvas (height, width)."""
    big = (
        np.asarray(
            Image.fromarray((digit * 255).astype(np.uint8)).resize((56, 56), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        / 255
    )
    out = np.zeros(canvas, dtype=np.float32)
    top = int(rng.integers(0, canvas[0] - 56 + 1))
    left = int(rng.integers(0, canvas[1] - 56 + 1))
    out[top: top + 56, left: left + 56] = big
    return out


def renderings(x: np.ndarray, seed: int = 0) -> dict[str, list[bytes]]:
    """Five PNG renderings of each held-out digit (see the module docstring)."""
    rng = np.random.default_rng(seed)
    sets: dict[str, list[bytes]] = {
        k: []
        for k in (
            "dark on light", "light on dark", "off-centre, dark on light", "off-centre, light on dark",
            "non-square crop",
        )
    }
    for digit in x:
        sets["dark on light"].append(_png(1 - digit))
        sets["light on dark"].append(_png(digit))
        off = _placed(digit, (112, 112), rng)
        sets["off-centre, dark on light"].append(_png(1 - off))
        sets["off-centre, light on dark"].append(_png(off))
        shape = (64, int(rng.integers(112, 160))) if rng.random() < 0.5 else (int(rng.integers(112, 160)), 64)
        sets["non-square crop"].append(_png(1 - _placed(digit, shape, rng)))
    return sets


def accuracy(
    session: ort.InferenceSession, task: ImageClassificationTask, pngs: list[bytes], y: np.ndarray
) -> float:
    batch = np.stack([decode_image(p, task).tensor for p in pngs]).astype(np.float32)
    logits = session.run(None, {task.input: batch})[0]
    return float((logits.argmax(1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args(argv)
    config = load_config(args.repo / args.model / "config.yaml")
    task = config.task
    assert isinstance(task, ImageClassificationTask), "an image-classification model"
    versions = sorted(int(p.name) for p in (args.repo / args.model).iterdir() if p.name.isdigit())
    session = ort.InferenceSession(str(args.repo / args.model / str(versions[-1]) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x, y = heldout()
    sets = renderings(x)
    variants = {
        "invert: true, resize: pad": task.model_copy(update={"invert": True, "resize": "pad"}),
        "invert: auto, resize: pad": task.model_copy(update={"invert": "auto", "resize": "pad"}),
        "invert: auto, resize: ink": task.model_copy(update={"invert": "auto", "resize": "ink"}),
    }
    sys.stdout.write(f"{args.model} on {len(y)} held-out real digits; accuracy per rendering\n\n")
    sys.stdout.write("| rendering | " + " | ".join(f"`{v}`" for v in variants) + " |\n")
    sys.stdout.write("|---|" + "---:|" * len(variants) + "\n")
    for name, pngs in sets.items():
        cells = [f"{accuracy(session, t, pngs, y):.3f}" for t in variants.values()]
        sys.stdout.write(f"| {name} | " + " | ".join(cells) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
