"""What each model's task endpoint takes, in words, with a curl command and a JSON body that work.

"Work" is literal: the image example is a 1x1 PNG every image model decodes, the audio example a short
silent WAV, and the text example is cut to fit a model that refuses texts over its max_length.
"""

from __future__ import annotations

import shlex
from typing import Any

import orjson

from service.errors import ServiceError
from service.repository.config import (
    AnomalyDetectionTask,
    AudioClassificationTask,
    EmbeddingTask,
    ImageClassificationTask,
    ImageGenerationTask,
    SpeechRecognitionTask,
    TextClassificationTask,
)
from service.repository.registry import LoadedModel
from service.tasks import text
from service.tasks.schema import PNG_1X1, ModelSummary, silent_wav_base64

EXAMPLE_TEXTS = ("what a lovely day", "what a lovely", "what a", "what")
"""Example texts, longest first; a model that refuses long texts gets the longest that fits."""


def describe(model: LoadedModel, *, base_url: str) -> ModelSummary:
    """A `GET /v1/models` entry: task, labels, what to send and an example request."""
    config = model.config
    task = config.task
    state = str(getattr(model.state, "value", model.state))
    common: dict[str, Any] = {
        "name": model.name, "version": model.version, "state": state, "description": config.description,
    }
    if task is None:
        return ModelSummary(
            **common,
            task=None,
            labels=config.labels,
            input=f"tensors only (no task section): POST {base_url}/v2/models/{model.name}/infer",
            predict_url=None,
            example_curl=None,
        )
    url = f"{base_url}/v1/models/{model.name}/predict"
    curl, body, words = _example(model, url)
    labels = getattr(task, "labels", []) or config.labels
    return ModelSummary(
        **common,
        task=task.type,
        labels=labels,
        input=words,
        predict_url=url,
        example_curl=curl,
        example_json=body,
    )


def _example(model: LoadedModel, url: str) -> tuple[str, dict[str, object], str]:
    """(curl command, JSON body, description) for the model's task."""
    task = model.config.task
    target = shlex.quote(url)
    if isinstance(task, ImageClassificationTask | AnomalyDetectionTask):
        height, width = task.size
        words = (
            "one or more images (PNG, JPEG, WebP, BMP, GIF; the first frame of an animation): multipart "
            "field 'file' (repeat it for several), a raw image body, or JSON {\"image\": base64} / "
            f"{{\"images\": [...]}}; each is brought to {height}x{width} {task.channels} ({task.resize})"
        )
        if isinstance(task, AnomalyDetectionTask):
            words += (
                f"; answers a reconstruction-error score, anomalous above {task.threshold:.4g}, and with "
                "return_reconstruction=true the reconstruction and an error map as PNGs"
            )
            curl = f"curl -F file=@image.png {shlex.quote(url + '?return_reconstruction=true')}"
            return curl, {"image": PNG_1X1, "return_reconstruction": True}, words
        return f"curl -F file=@image.png {target}", {"image": PNG_1X1, "top_k": task.top_k}, words
    if isinstance(task, ImageGenerationTask):
        limit = min(task.max_count, model.config.max_batch_size or task.max_count)
        if task.label_input is None:
            body: dict[str, object] = {"count": 4, "seed": 42}
            words = f"JSON {{\"count\": n, \"seed\": s}}: n images (at most {limit})"
        else:
            picks = list(range(min(2, len(task.labels))))
            body = {"labels": picks, "count": 2, "seed": 42}
            words = (
                f"JSON {{\"labels\": [...], \"count\": n, \"seed\": s}}: n images of each class, by index 0-"
                f"{len(task.labels) - 1} or name (unset: every class); at most {limit} in all"
            )
        words += (
            "; the same seed gives the same images; Accept: image/png answers one PNG grid (a row per class)"
        )
        data = shlex.quote(orjson.dumps(body).decode())
        curl = (
            f"curl -H 'Content-Type: application/json' -H 'Accept: image/png' -d {data} -o grid.png {target}"
        )
        return curl, body, words
    if isinstance(task, TextClassificationTask | EmbeddingTask):
        policy = task.truncation if isinstance(task, TextClassificationTask) else "truncate"
        words = (
            "JSON {\"text\": \"...\"} or {\"texts\": [...]}, or a text/plain body; "
            f"at most {task.max_length} tokens per text (longer: {policy})"
        )
        example = _example_text(model, task) if isinstance(task, TextClassificationTask) else EXAMPLE_TEXTS[0]
        body = {"text": example}
        data = shlex.quote(f'{{"text": "{example}"}}')
        return f"curl -H 'Content-Type: application/json' -d {data} {target}", body, words
    assert isinstance(task, SpeechRecognitionTask | AudioClassificationTask)
    words = (
        "a recording (WAV PCM/float, FLAC, OGG, MP3; any rate from 4 kHz to 384 kHz, mono or stereo): "
        "multipart field 'file', a raw body (Content-Type audio/wav, audio/flac, audio/ogg or "
        "application/octet-stream) or JSON {\"audio\": base64}; at most "
        f"{task.max_duration_s:g} s, resampled to {task.sample_rate} Hz mono"
    )
    extra = "?return_timestamps=true" if isinstance(task, SpeechRecognitionTask) else ""
    curl = f"curl -H 'Content-Type: audio/wav' --data-binary @recording.wav {shlex.quote(url + extra)}"
    return curl, {"audio": silent_wav_base64()}, words


def _example_text(model: LoadedModel, task: TextClassificationTask) -> str:
    """The longest example text this model takes: all fit when it truncates, else counted in tokens."""
    if task.truncation == "truncate":
        return EXAMPLE_TEXTS[0]
    try:
        tok = text.load_tokenizer(model.side_file(task.tokenizer), max_length=task.max_length, truncate=False)
    except (ServiceError, ValueError):  # a model that failed to load: its entry says so; any text will do
        return EXAMPLE_TEXTS[0]
    for candidate in EXAMPLE_TEXTS:
        prepared = candidate.lower() if task.lowercase else candidate
        if len(tok.tokenizer.encode(prepared).ids) <= task.max_length:
            return candidate
    return EXAMPLE_TEXTS[-1]
