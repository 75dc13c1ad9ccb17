"""Wire types of the /v1 task endpoints: one request and one response type per task, with examples.

Requests are JSON; images and recordings may instead come as multipart uploads or raw bodies, which
`service/api/tasks.py` reads itself. Options (`top_k`, `return_probabilities`, `return_timestamps`)
may be given in the JSON body, as multipart form fields or as query parameters; the body wins.
"""

from __future__ import annotations

import base64
import functools
import io
import wave
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
"""A 1x1 grayscale PNG, base64: the image example, which every image model can decode."""


@functools.cache
def silent_wav_base64() -> str:
    """0.1 s of 8 kHz 8-bit mono silence as base64 WAV: an audio example that really decodes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(b"\x80" * 800)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _OneOrMany(_Request):
    """Exactly one of a single item field and a list field; `items()` gives the list either way."""

    single_field: ClassVar[str] = ""
    many_field: ClassVar[str] = ""

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOrMany:
        single, many = getattr(self, self.single_field), getattr(self, self.many_field)
        if (single is None) == (many is None):
            raise ValueError(
                f"give exactly one of '{self.single_field}' (one item) and '{self.many_field}' (a list)"
            )
        if many is not None and not many:
            raise ValueError(f"'{self.many_field}' is empty; give at least one item")
        return self

    def items(self) -> list[str]:
        single, many = getattr(self, self.single_field), getattr(self, self.many_field)
        return [single] if single is not None else list(many)


class ImageClassifyRequest(_OneOrMany):
    """Images as base64 (optionally a `data:image/...;base64,` URL)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"image": PNG_1X1, "top_k": 3}]}
    )
    single_field, many_field = "image", "images"
    image: str | None = None
    """One image, base64-encoded PNG, JPEG, WebP, BMP or GIF."""
    images: list[str] | None = None
    """Several images; they are classified as one batch."""
    top_k: int | None = Field(None, ge=1)
    """Labels per image (default: the model's `task.top_k`)."""
    return_probabilities: bool | None = None
    """Also return every label's score."""


class TextClassifyRequest(_OneOrMany):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "what a lovely day", "top_k": 2}]}
    )
    single_field, many_field = "text", "texts"
    text: str | None = None
    """One text."""
    texts: list[str] | None = None
    """Several texts; they are classified as one batch."""
    top_k: int | None = Field(None, ge=1)
    """Labels per text (default: the model's `task.top_k`)."""
    return_probabilities: bool | None = None
    """Also return every label's score."""


class EmbeddingRequest(_OneOrMany):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"texts": ["first", "second"]}]}
    )
    single_field, many_field = "text", "texts"
    text: str | None = None
    texts: list[str] | None = None


class AudioRequest(_OneOrMany):
    """A recording as base64 in JSON (multipart upload or a raw body are simpler for big files)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"audio": "<base64 WAV>"}]})
    single_field, many_field = "audio", "audios"
    audio: str | None = None
    """One recording, base64-encoded WAV, FLAC, OGG or MP3."""
    audios: list[str] | None = None
    """Several recordings, one batch."""
    top_k: int | None = Field(None, ge=1)
    """Audio classification: labels per recording."""
    return_probabilities: bool | None = None
    """Audio classification: also return every label's score."""
    return_timestamps: bool | None = None
    """Speech recognition: also return word and character timestamps."""


class AnomalyRequest(_OneOrMany):
    """Images as base64 (optionally a `data:image/...;base64,` URL), scored by an autoencoder."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"image": PNG_1X1, "return_reconstruction": True}]}
    )
    single_field, many_field = "image", "images"
    image: str | None = None
    """One image, base64-encoded PNG, JPEG, WebP, BMP or GIF."""
    images: list[str] | None = None
    """Several images; they are scored as one batch."""
    return_reconstruction: bool | None = None
    """Also return, per image, what the model saw, its reconstruction and a per-pixel error map
    (PNG, base64)."""


MAX_SEED = 2**63 - 1


class GenerationRequest(_Request):
    """What to draw: which classes, how many of each, and the seed that makes it reproducible."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"labels": [3, 7], "count": 2, "seed": 42}]}
    )
    labels: list[StrictInt | str] | None = Field(None, min_length=1)
    """Classes to draw, by index (3) or name ("3"); conditional models only. Unset: every class."""
    count: StrictInt = Field(1, ge=1)
    """Images per requested class (for an unconditional model: images in all)."""
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    """Seed of the noise: the same seed and request give the same images. Unset: a random seed, returned."""


# ---- responses ----------------------------------------------------------------------------------------


class LabelScore(BaseModel):
    label: str
    score: float
    """Probability (softmax), or independent probability (sigmoid) for multi-label models."""


class ImagePrediction(BaseModel):
    labels: list[LabelScore]
    """Best labels first."""
    probabilities: dict[str, float] | None = None
    """Every label's score, with `return_probabilities`."""
    notes: list[str] = []
    """What was changed to make the image fit (conversions, first frame of an animation, EXIF rotation)."""


class TaskResponse(BaseModel):
    model: str
    version: str
    task: str


class ImageClassifyResponse(TaskResponse):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "cnn", "version": "1", "task": "image-classification",
        "predictions": [
            {"labels": [{"label": "7", "score": 0.97}, {"label": "1", "score": 0.02}], "notes": []},
        ],
    }]})
    task: Literal["image-classification"] = "image-classification"
    predictions: list[ImagePrediction]
    """One per image, in request order."""


class TextPrediction(BaseModel):
    labels: list[LabelScore]
    probabilities: dict[str, float] | None = None
    tokens: int
    """Tokens fed to the model (after truncation)."""
    truncated: bool = False
    """True when the text was longer than the model's max_length and was cut."""


class TextClassifyResponse(TaskResponse):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "text", "version": "1", "task": "text-classification",
        "predictions": [{"labels": [{"label": "positive", "score": 0.91}], "tokens": 6, "truncated": False}],
    }]})
    task: Literal["text-classification"] = "text-classification"
    predictions: list[TextPrediction]


class TimedText(BaseModel):
    text: str
    start_s: float
    end_s: float


class Transcription(BaseModel):
    text: str
    confidence: float
    """Mean probability of the best symbol over the frames that emit one (0..1)."""
    duration_s: float
    """Duration of the recording as sent."""
    words: list[TimedText] | None = None
    """With `return_timestamps`: words with start and end in seconds."""
    chars: list[TimedText] | None = None
    """With `return_timestamps`: every emitted symbol with start and end in seconds."""
    notes: list[str] = []
    """What was changed (resampling, down-mixing, clipping, padding)."""


class TranscribeResponse(TaskResponse):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "speech", "version": "1", "task": "speech-recognition",
        "predictions": [{"text": "yes no", "confidence": 0.88, "duration_s": 1.2, "notes": []}],
    }]})
    task: Literal["speech-recognition"] = "speech-recognition"
    predictions: list[Transcription]
    """One per recording, in request order."""


class AudioPrediction(BaseModel):
    labels: list[LabelScore]
    probabilities: dict[str, float] | None = None
    duration_s: float
    notes: list[str] = []


class AudioClassifyResponse(TaskResponse):
    task: Literal["audio-classification"] = "audio-classification"
    predictions: list[AudioPrediction]


class EmbeddingResponse(TaskResponse):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "embedder", "version": "1", "task": "embedding", "dimensions": 3,
        "embeddings": [[0.6, 0.0, 0.8]], "truncated": [False],
    }]})
    task: Literal["embedding"] = "embedding"
    dimensions: int
    embeddings: list[list[float]]
    """One vector per text, in request order (L2-normalised when the model says so)."""
    truncated: list[bool]
    """Per text: true when it was cut to the model's max_length."""


class AnomalyPrediction(BaseModel):
    score: float
    """Reconstruction error (the task's `score`: mean squared or absolute difference); higher is stranger."""
    is_anomaly: bool
    """score > threshold."""
    threshold: float
    """The model's calibrated threshold."""
    input: str | None = None
    """With `return_reconstruction`: the image as the model saw it (after resizing, polarity), base64 PNG."""
    reconstruction: str | None = None
    """With `return_reconstruction`: the model's reconstruction, base64 PNG."""
    error_map: str | None = None
    """With `return_reconstruction`: per-pixel absolute error as a heat map (black 0, white 1), base64 PNG."""
    notes: list[str] = []
    """What was changed to make the image fit (conversions, first frame of an animation, EXIF rotation)."""


class AnomalyResponse(TaskResponse):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "autoencoder", "version": "1", "task": "anomaly-detection", "false_positive_rate": 0.01,
        "predictions": [{"score": 0.012, "is_anomaly": False, "threshold": 0.031, "notes": []}],
    }]})
    task: Literal["anomaly-detection"] = "anomaly-detection"
    false_positive_rate: float | None = None
    """Share of normal calibration images above the threshold, when the config states it."""
    predictions: list[AnomalyPrediction]
    """One per image, in request order."""


class GeneratedImage(BaseModel):
    label: str | None
    """The class it was drawn as (null for unconditional models)."""
    png: str
    """The image, base64 PNG."""


class GenerationResponse(TaskResponse):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "gan", "version": "1", "task": "image-generation", "seed": 42, "width": 28, "height": 28,
        "images": [{"label": "3", "png": PNG_1X1}],
    }]})
    task: Literal["image-generation"] = "image-generation"
    seed: int
    """The seed used (send it back to get the same images)."""
    width: int
    height: int
    images: list[GeneratedImage]
    """Per requested class in request order, `count` images each."""


PredictResponse = (
    ImageClassifyResponse | TextClassifyResponse | TranscribeResponse | AudioClassifyResponse
    | EmbeddingResponse | AnomalyResponse | GenerationResponse
)


class ModelSummary(BaseModel):
    name: str
    version: str
    state: str
    task: str | None
    """Task type, or null for models served through /v2 tensors only."""
    description: str = ""
    labels: list[str] = []
    input: str
    """What to send, in words."""
    predict_url: str | None
    example_curl: str | None
    """A command that works against this server (host left as localhost:8000)."""
    example_json: dict[str, Any] | None = None
    """A JSON body the predict route accepts."""


class ModelListResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"models": [{
        "name": "cnn", "version": "1", "state": "READY", "task": "image-classification",
        "labels": ["0", "1"], "input": "one or more images (PNG, JPEG, WebP, BMP, GIF) ...",
        "predict_url": "/v1/models/cnn/predict",
        "example_curl": "curl -F file=@digit.png http://localhost:8000/v1/models/cnn/predict",
        "example_json": {"image": "<base64>"},
    }]}]})
    models: list[ModelSummary]
