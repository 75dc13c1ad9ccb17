"""Pictures of the autoencoder and gan families for docs/tasks.md, made through the server's own code.

    python -m models.recipes.family_figures --repo model_repository --out docs/figures

- anomaly-map.png: for a held-out real digit and one image of each out-of-distribution set: the image
  as the model saw it, its reconstruction and the error map (service.tasks.anomaly), with the score;
- gan-grid.png: the generator's grid for every class, 6 per class, seed 42 (service.tasks.generation),
  exactly what `POST /v1/models/gan/predict` with `Accept: image/png` returns, enlarged.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from models.data.images import ood_sets, to_png
from models.recipes.image_inputs import heldout
from service.repository.config import AnomalyDetectionTask, ImageGenerationTask, load_config
from service.tasks import anomaly, generation
from service.tasks.image import decode_image
from service.tasks.schema import GenerationRequest


def _session(repo: Path, name: str) -> ort.InferenceSession:
    versions = sorted(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    return ort.InferenceSession(
        str(repo / name / str(versions[-1]) / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _image(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def anomaly_map(repo: Path, scale: int = 5) -> Image.Image:
    task = load_config(repo / "autoencoder" / "config.yaml").task
    assert isinstance(task, AnomalyDetectionTask)
    session = _session(repo, "autoencoder")
    x, _ = heldout()
    sets = ood_sets(normal=x[:8], seed=0)
    rows = {"digit": x[3], "letter": sets["letters"][1], "strokes": sets["strokes"][0],
            "noise": sets["noise"][1], "inverted digit": sets["inverted"][3], "blank page": sets["blank"][0]}
    # dark-on-light PNGs, as sent
    batch = np.stack([decode_image(to_png(v), task).tensor for v in rows.values()])
    rebuilt = session.run(None, {task.input: batch})[0]
    scores = anomaly.scores(batch, rebuilt, task.score)
    pictures = anomaly.pictures(batch, rebuilt, task)
    side, label_w, gap = 28 * scale, 190, 6
    head = 24
    canvas = Image.new("RGB", (label_w + 3 * (side + gap), head + len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(("model input", "reconstruction", "error map")):
        draw.text((label_w + i * (side + gap) + 4, 4), title, fill="black")
    for r, (name, score, images) in enumerate(zip(rows, scores, pictures, strict=True)):
        top = head + r * (side + gap)
        verdict = "ANOMALY" if score > task.threshold else "normal"
        draw.text((6, top + side // 2 - 14), f"{name}", fill="black")
        draw.text((6, top + side // 2 + 2), f"score {score:.4f} -> {verdict}", fill="black")
        for c, data in enumerate(images):
            canvas.paste(
                _image(data).resize((side, side), Image.Resampling.NEAREST), (label_w + c * (side + gap), top)
            )
    return canvas


def gan_grid(repo: Path, scale: int = 4) -> Image.Image:
    task = load_config(repo / "gan" / "config.yaml").task
    assert isinstance(task, ImageGenerationTask)
    session = _session(repo, "gan")
    plan = generation.plan(
        task, GenerationRequest(labels=None, count=6, seed=42), model_name="gan", max_batch_size=None
    )
    assert plan.classes is not None
    output = session.run(None, {task.noise_input: plan.noise, "label": plan.classes})[0]
    images = generation.to_images(output, task, items=len(plan.noise), model_name="gan")
    grid = Image.open(
        io.BytesIO(generation.grid_png(images, rows=plan.rows, columns=plan.columns, ground=128))
    )
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    anomaly_map(args.repo).save(args.out / "anomaly-map.png", optimize=True)
    gan_grid(args.repo).save(args.out / "gan-grid.png", optimize=True)
    sys.stdout.write(f"wrote {args.out / 'anomaly-map.png'} and {args.out / 'gan-grid.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
