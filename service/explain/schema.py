"""Wire types of `POST /v1/models/{name}/explain`: the options and one response type per input kind.

The body is whatever /predict takes (an image, a text, a recording); the options below may be query
parameters, JSON fields beside `image`/`text`/`audio`, or multipart form fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from service.tasks.schema import LabelScore

MIN_BUDGET = 8
MAX_BUDGET = 4096
"""Bounds of `budget` (model evaluations per explanation, the two references included)."""
METHODS = ("kernel-shap", "occlusion")


@dataclass(slots=True)
class ExplainOptions:
    """The parsed explain options; None means the task's default."""

    method: str | None = None
    target: str | None = None
    budget: int | None = None
    seed: int = 0
    baseline: str | None = None


class Baseline(BaseModel):
    kind: str
    """What a removed feature is replaced by: `blur`, `black`, `mask-token`, `silence`."""
    description: str
    score: float
    """The explained quantity on the all-baseline input, f(baseline)."""


class Efficiency(BaseModel):
    """KernelSHAP's efficiency property: sum(attributions) = f(x) - f(baseline)."""

    total: float
    """Sum of the attributions."""
    expected: float
    """f(x) - f(baseline)."""
    tolerance: float
    """Largest |total - expected| the server guarantees."""


class ExplanationBase(BaseModel):
    model: str
    version: str
    task: str
    method: Literal["kernel-shap", "occlusion"]
    explained: str
    """The quantity the attributions explain, in words (e.g. "probability of label '7'")."""
    target: str | None
    """The label explained (classification), or null (speech: the transcript is explained)."""
    score: float
    """The explained quantity on the input as sent, f(x)."""
    baseline: Baseline
    evaluations: int
    """Model evaluations spent (perturbed copies, the input and the baseline included)."""
    seed: int
    efficiency: Efficiency | None = None
    """KernelSHAP only."""
    prediction: list[LabelScore] = []
    """Classification: the model's top labels for the input as sent."""


class ImageExplanation(ExplanationBase):
    # a real answer of the demo cnn for a 7 drawn on a 280x280 page (docs/explanations.md), maps cut short
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "cnn", "version": "1", "task": "image-classification", "method": "occlusion",
        "explained": "probability of label '7'", "target": "7", "score": 0.9461,
        "baseline": {
            "kind": "black", "description": "black (pixel value 0 after the task's inversion, normalised)",
            "score": 0.0119,
        },
        "evaluations": 51, "seed": 0,
        "prediction": [{"label": "7", "score": 0.9461}, {"label": "0", "score": 0.0132}],
        "segments": 49, "size": [28, 28], "attributions": [[0.0, 0.0, 0.0041]], "image_size": [280, 280],
        "image_attributions": [[0.0, 0.0, 0.0041]],
        "heatmap_png": "iVBORw0KGgoAAAANSUhEUgAAARgAAAEYCAIAAAAI7H7bAAA...",
    }]})
    segments: int
    """Grid cells the image was split into (the features)."""
    size: tuple[int, int]
    """(height, width) of the model input."""
    attributions: list[list[float]]
    """Attribution per pixel of the model input (each cell's value spread evenly over its pixels)."""
    image_size: tuple[int, int]
    """(height, width) of the image as sent (after EXIF rotation)."""
    image_attributions: list[list[float]] | None
    """The same map at the image's size (null over 512 x 512 pixels: use the heatmap)."""
    heatmap_png: str
    """Base64 PNG: the image in grey with positive attributions in red and negative in blue
    (longest side at most 1024 px)."""


class WordScore(BaseModel):
    text: str
    start: int
    """Character offset of the word in the text as sent."""
    end: int
    score: float


class TextExplanation(ExplanationBase):
    # a real answer of the demo (quick) text model, words cut short
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "text", "version": "1", "task": "text-classification", "method": "kernel-shap",
        "explained": "softmax probability of label 'negative'", "target": "negative", "score": 0.311,
        "baseline": {"kind": "attention-mask", "description": "each removed word's tokens hidden through the "
                     "attention mask (as padding); the baseline removes every word", "score": 0.1764},
        "evaluations": 64, "seed": 0, "efficiency": {"total": 0.1346, "expected": 0.1346, "tolerance": 1e-06},
        "prediction": [{"label": "neutral", "score": 0.435}, {"label": "negative", "score": 0.311},
                       {"label": "positive", "score": 0.254}],
        "words": [{"text": "worst", "start": 0, "end": 5, "score": -0.0252},
                  {"text": "service", "start": 15, "end": 22, "score": 0.0522}],
        "tokens": 16, "truncated": False,
    }]})
    words: list[WordScore]
    """Every word of the text (WordPiece pieces merged back), in order."""
    tokens: int
    truncated: bool
    """True when the text was cut to max_length: words past the cut get no score."""


class TimedScore(BaseModel):
    start_s: float
    end_s: float
    score: float


class TimedWordScore(TimedScore):
    text: str


class AudioExplanation(ExplanationBase):
    # the shape of a real answer; the numbers are illustrative
    # (the quick demo speech model transcribes nothing)
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "speech", "version": "1", "task": "speech-recognition", "method": "occlusion",
        "explained": "log-probability of the transcript 'yes' (CTC, all alignments)", "target": None,
        "score": -0.41, "baseline": {"kind": "silence", "description": "all samples zero", "score": -48.2},
        "evaluations": 22, "seed": 0, "transcript": "yes",
        "words": [{"text": "yes", "start_s": 0.3, "end_s": 0.66, "score": 31.5}],
        "curve": [{"start_s": 0.0, "end_s": 0.1, "score": 0.02}],
    }]})
    transcript: str | None = None
    """Speech recognition: the greedy transcript whose log-probability is explained."""
    words: list[TimedWordScore] = []
    """Speech recognition: each transcribed word's score (the windows' scores weighted by overlap)."""
    curve: list[TimedScore]
    """Score of each time window, in order."""
    window_s: float
    duration_s: float


ExplainResponse = ImageExplanation | TextExplanation | AudioExplanation
