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
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "cnn", "version": "1", "task": "image-classification", "method": "kernel-shap",
        "explained": "probability of label '7'", "target": "7", "score": 0.998,
        "baseline": {"kind": "blur", "description": "Gaussian blur (sigma 3.5 px) of the model input",
                     "score": 0.012},
        "evaluations": 256, "seed": 0,
        "efficiency": {"total": 0.986, "expected": 0.986, "tolerance": 1e-06},
        "prediction": [{"label": "7", "score": 0.998}, {"label": "1", "score": 0.001}],
        "segments": 49, "size": [28, 28], "attributions": [[0.0, 0.01, "..."]], "image_size": [28, 28],
        "image_attributions": [[0.0, 0.01, "..."]], "heatmap_png": "iVBORw0KGgo...",
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
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "text", "version": "1", "task": "text-classification", "method": "kernel-shap",
        "explained": "probability of label 'negative'", "target": "negative", "score": 0.93,
        "baseline": {"kind": "mask-token", "description": "every word replaced by [MASK]", "score": 0.41},
        "evaluations": 66, "seed": 0, "efficiency": {"total": 0.52, "expected": 0.52, "tolerance": 1e-06},
        "prediction": [{"label": "negative", "score": 0.93}],
        "words": [{"text": "awful", "start": 8, "end": 13, "score": 0.44}], "tokens": 6, "truncated": False,
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
