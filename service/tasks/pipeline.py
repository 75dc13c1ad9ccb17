"""Task pipelines: decoded request -> model tensors -> batcher -> task response, chosen by task type.

Each task is two small steps around `LoadedModel.infer` (the same dynamic batcher as /v2 infer):
`pre` turns what the client sent into named tensors (in a worker thread: decoding is CPU work), `post`
turns the model's outputs into the response. `PIPELINES` maps the config's task type to its function.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.errors import InferenceFailed, InvalidInput
from service.repository.config import (
    AnomalyDetectionTask,
    AudioClassificationTask,
    EmbeddingTask,
    ImageClassificationTask,
    ImageGenerationTask,
    ModelConfig,
    SpeechRecognitionTask,
    TextClassificationTask,
)
from service.repository.registry import LoadedModel
from service.tasks import anomaly, audio, generation, image, labels, text
from service.tasks.schema import (
    AnomalyPrediction,
    AnomalyResponse,
    AudioClassifyResponse,
    AudioPrediction,
    EmbeddingResponse,
    GeneratedImage,
    GenerationRequest,
    GenerationResponse,
    ImageClassifyResponse,
    ImagePrediction,
    LabelScore,
    PredictResponse,
    TextClassifyResponse,
    TextPrediction,
    TimedText,
    TranscribeResponse,
    Transcription,
)
from service.types import NUMPY_DTYPES, Tensor, TensorMap

_NUMPY_DTYPES = {name: dtype for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}


@dataclass(slots=True)
class Options:
    top_k: int | None = None
    return_probabilities: bool = False
    return_timestamps: bool = False
    return_reconstruction: bool = False
    image_grid: bool = False
    """Image generation: answer with one PNG grid (the client sent `Accept: image/png`) instead of JSON."""


@dataclass(slots=True)
class Payload:
    """What the client sent: encoded files (images, recordings) or texts, and the options."""

    blobs: list[bytes]
    texts: list[str]
    options: Options
    generation: GenerationRequest | None = None
    """Image generation: the parsed JSON request (it has no files or texts)."""


Pipeline = Callable[[LoadedModel, Payload], Awaitable[PredictResponse | Response]]


def check_count(model: LoadedModel, count: int, noun: str) -> None:
    """Refuse more items than one batch holds before decoding any of them."""
    if count == 0:
        raise InvalidInput(f"no {noun} given")
    limit = model.config.max_batch_size
    if limit and count > limit:
        raise InvalidInput(
            f"{count} {noun} in one request; model '{model.name}' takes at most {limit} per request"
        )


def cast(config: ModelConfig, name: str, array: Tensor) -> Tensor:
    """Cast a prepared array to the datatype the model declares for input `name` (as is if unknown)."""
    for spec in config.inputs:
        if spec.name == name and spec.datatype in _NUMPY_DTYPES:
            return array.astype(_NUMPY_DTYPES[spec.datatype], copy=False)
    return array


def output(outputs: TensorMap, name: str, model: LoadedModel) -> Tensor:
    if name not in outputs:
        raise InferenceFailed(
            f"model '{model.name}' returned no output '{name}' "
            f"(it has {sorted(outputs)}); fix the task section"
        )
    return outputs[name]


def _ranked(
    scores: Tensor, names: Sequence[str], top_k: int, return_all: bool
) -> tuple[list[LabelScore], dict[str, float] | None]:
    ranked = labels.rank(scores, names, top_k=top_k, return_all=return_all)
    return [LabelScore(label=n, score=s) for n, s in ranked.top], ranked.all_scores


def _rank_rows(
    model: LoadedModel,
    task: ImageClassificationTask | TextClassificationTask | AudioClassificationTask,
    probs: Tensor,
    options: Options,
) -> list[tuple[list[LabelScore], dict[str, float] | None]]:
    """Each item's top-k labels (and every score when asked), with the task's or the model's labels."""
    names = task.labels or model.config.labels
    top_k = options.top_k or task.top_k
    return [_ranked(row, names, top_k, options.return_probabilities) for row in probs]


# ---- image -------------------------------------------------------------------------------------------


async def classify_images(model: LoadedModel, payload: Payload) -> ImageClassifyResponse:
    task = model.config.task
    assert isinstance(task, ImageClassificationTask)
    decoded = await _decode_images(model, task, payload.blobs)
    batch = np.stack([d.tensor for d in decoded])  # B x (C, H, W) -> (B, C, H, W)
    outputs = await model.infer({task.input: cast(model.config, task.input, batch)})
    probs = labels.class_scores(
        output(outputs, task.output, model),
        items=len(decoded),
        activation="softmax" if task.logits else "none",
    )
    predictions = [
        ImagePrediction(labels=top, probabilities=everything, notes=item.notes)
        for (top, everything), item in zip(
            _rank_rows(model, task, probs, payload.options), decoded, strict=True
        )
    ]
    return ImageClassifyResponse(model=model.name, version=model.version, predictions=predictions)


async def _decode_images(model: LoadedModel, task: ImageClassificationTask | AnomalyDetectionTask,
                         blobs: list[bytes]) -> list[image.DecodedImage]:
    check_count(model, len(blobs), "images")
    return await run_in_threadpool(
        lambda: [image.decode_image(data, task, index=i) for i, data in enumerate(blobs)]
    )


async def detect_anomalies(model: LoadedModel, payload: Payload) -> AnomalyResponse:
    task = model.config.task
    assert isinstance(task, AnomalyDetectionTask)
    decoded = await _decode_images(model, task, payload.blobs)
    stacked = np.stack([d.tensor for d in decoded])  # B x (C, H, W) -> (B, C, H, W)
    batch = cast(model.config, task.input, stacked)
    outputs = await model.infer({task.input: batch})
    rebuilt = output(outputs, task.output, model)
    anomaly.check_shape(batch, rebuilt, model.name, task.output)
    values = anomaly.scores(batch, rebuilt, task.score)
    pictures = (
        await run_in_threadpool(anomaly.pictures, batch, rebuilt, task)
        if payload.options.return_reconstruction
        else [(None, None, None)] * len(decoded)
    )
    predictions = [
        AnomalyPrediction(score=float(v), is_anomaly=bool(v > task.threshold), threshold=task.threshold,
                          input=seen, reconstruction=rec, error_map=err, notes=item.notes)
        for v, (seen, rec, err), item in zip(values, pictures, decoded, strict=True)
    ]
    return AnomalyResponse(
        model=model.name,
        version=model.version,
        false_positive_rate=task.false_positive_rate,
        predictions=predictions,
    )


async def generate_images(model: LoadedModel, payload: Payload) -> GenerationResponse | Response:
    task = model.config.task
    assert isinstance(task, ImageGenerationTask)
    request = payload.generation if payload.generation is not None else GenerationRequest.model_validate({})
    drawn = generation.plan(task, request, model_name=model.name, max_batch_size=model.config.max_batch_size)
    inputs = {task.noise_input: cast(model.config, task.noise_input, drawn.noise)}
    if task.label_input is not None and drawn.classes is not None:
        inputs[task.label_input] = cast(model.config, task.label_input, drawn.classes)
    outputs = await model.infer(inputs)
    pictures = generation.to_images(
        output(outputs, task.output, model), task, items=len(drawn.noise), model_name=model.name
    )
    if payload.options.image_grid:
        grid = await run_in_threadpool(
            lambda: generation.grid_png(pictures, rows=drawn.rows, columns=drawn.columns, ground=128)
        )
        return Response(grid, media_type="image/png", headers={"X-Seed": str(drawn.seed)})
    pngs = await run_in_threadpool(
        lambda: [base64.b64encode(generation.png(p)).decode("ascii") for p in pictures]
    )
    height, width = pictures[0].shape[:2]
    return GenerationResponse(
        model=model.name, version=model.version, seed=drawn.seed, width=width, height=height,
        images=[GeneratedImage(label=name, png=data) for name, data in zip(drawn.names, pngs, strict=True)],
    )


# ---- text --------------------------------------------------------------------------------------------


async def _encode(
    model: LoadedModel, task: TextClassificationTask | EmbeddingTask, texts: list[str]
) -> tuple[text.EncodedTexts, TensorMap]:
    check_count(model, len(texts), "texts")
    text.check_texts(texts)
    refuse = isinstance(task, TextClassificationTask) and task.truncation == "refuse"
    lowercase = isinstance(task, TextClassificationTask) and task.lowercase

    def run() -> text.EncodedTexts:
        tok = text.load_tokenizer(
            model.side_file(task.tokenizer), max_length=task.max_length, truncate=not refuse
        )
        return text.encode(texts, tok, max_length=task.max_length, lowercase=lowercase, refuse_long=refuse)

    encoded = await run_in_threadpool(run)
    inputs = {task.input_ids: cast(model.config, task.input_ids, encoded.ids)}
    if task.attention_mask:
        inputs[task.attention_mask] = cast(model.config, task.attention_mask, encoded.mask)
    if any(spec.name == task.token_type_ids for spec in model.config.inputs):  # BERT-family exports
        inputs[task.token_type_ids] = cast(model.config, task.token_type_ids, encoded.type_ids)
    return encoded, inputs


async def classify_texts(model: LoadedModel, payload: Payload) -> TextClassifyResponse:
    task = model.config.task
    assert isinstance(task, TextClassificationTask)
    encoded, inputs = await _encode(model, task, payload.texts)
    outputs = await model.infer(inputs)
    probs = labels.class_scores(
        output(outputs, task.output, model),
        items=len(payload.texts),
        activation="sigmoid" if task.multi_label else "softmax",
    )
    predictions = [
        TextPrediction(
            labels=top, probabilities=everything, tokens=encoded.lengths[i], truncated=encoded.truncated[i]
        )
        for i, (top, everything) in enumerate(_rank_rows(model, task, probs, payload.options))
    ]
    return TextClassifyResponse(model=model.name, version=model.version, predictions=predictions)


async def embed_texts(model: LoadedModel, payload: Payload) -> EmbeddingResponse:
    task = model.config.task
    assert isinstance(task, EmbeddingTask)
    encoded, inputs = await _encode(model, task, payload.texts)
    outputs = await model.infer(inputs)
    vectors = text.pool(
        output(outputs, task.output, model), encoded.mask, pooling=task.pooling, normalize=task.normalize
    )
    if vectors.shape[0] != len(payload.texts):
        raise InferenceFailed(f"embedding output has {vectors.shape[0]} rows for {len(payload.texts)} texts")
    return EmbeddingResponse(
        model=model.name,
        version=model.version,
        dimensions=int(vectors.shape[1]),
        embeddings=vectors.tolist(),
        truncated=encoded.truncated,
    )


# ---- audio -------------------------------------------------------------------------------------------


async def _decode_audio(
    model: LoadedModel, task: SpeechRecognitionTask | AudioClassificationTask, blobs: list[bytes]
) -> tuple[list[audio.DecodedAudio], TensorMap]:
    check_count(model, len(blobs), "recordings")
    decoded = await run_in_threadpool(
        lambda: [
            audio.decode_audio(
                data, sample_rate=task.sample_rate, max_duration_s=task.max_duration_s, index=i
            )
            for i, data in enumerate(blobs)
        ]
    )
    lengths = np.array([d.samples.shape[0] for d in decoded], dtype=np.int64)
    waves = np.zeros((len(decoded), int(lengths.max())), dtype=np.float32)  # (B, longest), zero padded
    for i, item in enumerate(decoded):
        waves[i, : lengths[i]] = item.samples
    inputs = {task.input: cast(model.config, task.input, waves)}
    if task.lengths_input:
        inputs[task.lengths_input] = cast(model.config, task.lengths_input, lengths)
    return decoded, inputs


def _valid_frames(outputs: TensorMap, task: SpeechRecognitionTask, model: LoadedModel, item: int,
                  samples: int, frames: int) -> int:
    """Frames of item `item` that belong to its audio (the rest is padding from longer neighbours)."""
    if task.output_lengths:
        count = int(np.asarray(output(outputs, task.output_lengths, model)).reshape(-1)[item])
    else:
        count = int(np.ceil(samples / task.sample_rate / task.frame_shift_s))
    return max(0, min(count, frames))


async def transcribe(model: LoadedModel, payload: Payload) -> TranscribeResponse:
    task = model.config.task
    assert isinstance(task, SpeechRecognitionTask)
    decoded, inputs = await _decode_audio(model, task, payload.blobs)
    outputs = await model.infer(inputs)
    scores = output(outputs, task.output, model)
    if scores.ndim != 3 or scores.shape[0] != len(decoded) or scores.shape[2] != len(task.vocabulary):
        raise InferenceFailed(
            f"'{task.output}' has shape {list(scores.shape)}; "
            f"expected [{len(decoded)}, frames, {len(task.vocabulary)}]"
        )
    predictions = []
    for i, item in enumerate(decoded):
        frames = _valid_frames(outputs, task, model, i, item.samples.shape[0], scores.shape[1])
        result = audio.ctc_greedy(
            scores[i, :frames],
            vocabulary=task.vocabulary,
            blank=task.blank_index,
            frame_shift_s=task.frame_shift_s,
        )
        stamps = payload.options.return_timestamps
        predictions.append(
            Transcription(
                text=result.text,
                confidence=result.confidence,
                duration_s=item.duration_s,
                words=[TimedText(text=w.text, start_s=w.start_s, end_s=w.end_s) for w in result.words]
                if stamps else None,
                chars=[TimedText(text=c.text, start_s=c.start_s, end_s=c.end_s) for c in result.chars]
                if stamps else None,
                notes=item.notes,
            )
        )
    return TranscribeResponse(model=model.name, version=model.version, predictions=predictions)


async def classify_audio(model: LoadedModel, payload: Payload) -> AudioClassifyResponse:
    task = model.config.task
    assert isinstance(task, AudioClassificationTask)
    decoded, inputs = await _decode_audio(model, task, payload.blobs)
    outputs = await model.infer(inputs)
    probs = labels.class_scores(
        output(outputs, task.output, model),
        items=len(decoded),
        activation="softmax" if task.logits else "none",
    )
    predictions = [
        AudioPrediction(labels=top, probabilities=everything, duration_s=item.duration_s, notes=item.notes)
        for (top, everything), item in zip(
            _rank_rows(model, task, probs, payload.options), decoded, strict=True
        )
    ]
    return AudioClassifyResponse(model=model.name, version=model.version, predictions=predictions)


PIPELINES: dict[str, Pipeline] = {
    "image-classification": classify_images,
    "text-classification": classify_texts,
    "embedding": embed_texts,
    "speech-recognition": transcribe,
    "audio-classification": classify_audio,
    "anomaly-detection": detect_anomalies,
    "image-generation": generate_images,
}
