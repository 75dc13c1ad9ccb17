"""Explanations of the trained demo models (the session's quick build, `demo` in conftest.py): a drawn 7's
explanation sits on its stroke, and deleting the words that the explanation blames for a prediction
weakens that prediction. Quick models are weakly trained, so the claims are about the explanation
being true to the model, not about the model being right.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import serve_app
from PIL import Image, ImageDraw, ImageFont

from service.explain.image import grid
from service.repository.config import ImageClassificationTask, load_config
from service.tasks.image import decode_image

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]  # the first test may pay for the demo build


def drawn_seven() -> bytes:
    """A 7 in dark ink on a light page larger than 28x28, as a user would upload it."""
    page = Image.new("RGB", (96, 120), (245, 242, 236))
    font = ImageFont.load_default(size=84)
    ImageDraw.Draw(page).text((48, 60), "7", fill=(30, 30, 60), font=font, anchor="mm", stroke_width=3,
                              stroke_fill=(30, 30, 60))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("method", ["occlusion", "kernel-shap"])
async def test_a_drawn_seven_is_explained_by_its_stroke(
    demo: tuple[Path, dict[str, Any]], method: str
) -> None:
    repo, built = demo
    if "cnn" not in built:
        pytest.skip("the demo build has no cnn")
    task = load_config(repo / "cnn" / "config.yaml").task
    assert isinstance(task, ImageClassificationTask)
    seven = drawn_seven()
    async with serve_app(repo) as client:
        response = await client.post(f"/v1/models/cnn/explain?target=7&method={method}", content=seven,
                                     headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    attributions = np.asarray(response.json()["attributions"])
    pixels = decode_image(seven, task).tensor[0]  # (28, 28), the stroke light on dark as the model sees it
    stroke = pixels > (pixels.min() + pixels.max()) / 2
    cells, _ = grid(*task.size)
    on_stroke = np.isin(cells, np.unique(cells[stroke]))  # the cells the stroke passes through
    positive = np.clip(attributions, 0, None)
    assert on_stroke.mean() < 0.4  # the stroke is a small part of the picture ...
    assert positive[on_stroke].sum() > 0.5 * positive.sum()  # ... and carries most of the positive mass


async def test_deleting_the_blamed_words_weakens_the_prediction(demo: tuple[Path, dict[str, Any]]) -> None:
    repo, built = demo
    if "text" not in built:
        pytest.skip("the demo build has no text model")
    sentence = "worst service ever, rude staff and a dirty awful room, never again"
    async with serve_app(repo) as client:
        explained = await client.post(
            "/v1/models/text/explain", json={"text": sentence, "target": "negative"}
        )
        assert explained.status_code == 200, explained.text
        words = sorted(explained.json()["words"], key=lambda w: -w["score"])[:2]
        kept = sentence
        for word in sorted(words, key=lambda w: -w["start"]):  # right to left: offsets stay valid
            kept = kept[: word["start"]] + kept[word["end"]:]
        predicted = await client.post("/v1/models/text/predict",
                                      json={"texts": [sentence, kept], "return_probabilities": True})
    before, after = (p["probabilities"]["negative"] for p in predicted.json()["predictions"])
    assert all(w["score"] > 0 for w in words)
    assert after < before
