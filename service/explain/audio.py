"""Explain a recording: consecutive time windows are the features; a removed window is silence.

Speech recognition explains the log-probability of the transcript the model gives for the recording
as sent (greedy CTC), summed over every alignment (the CTC forward algorithm, `ctc_log_likelihood`):
how much each window adds to the model's belief in its own transcript. Each transcribed word scores
the sum of the window scores weighted by how much of each window falls inside the word. Audio
classification explains the probability of the target label.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from starlette.concurrency import run_in_threadpool

from service.errors import InferenceFailed, InvalidInput
from service.explain import options
from service.explain.evaluate import concat, evaluate
from service.explain.kernelshap import BoolArray, Scores
from service.explain.schema import AudioExplanation, Baseline, ExplainOptions, TimedScore, TimedWordScore
from service.repository.config import AudioClassificationTask, SpeechRecognitionTask
from service.repository.registry import LoadedModel
from service.tasks import audio, labels
from service.tasks.pipeline import Payload, cast, output
from service.tasks.schema import LabelScore
from service.types import TensorMap

METHODS = ("occlusion", "kernel-shap")
WINDOW_S = 0.1
MAX_WINDOWS = 200
"""Longer recordings get longer windows, so one explanation stays within MAX_WINDOWS features."""
DEFAULT_BUDGET = 64


def ctc_log_likelihood(log_probs: npt.NDArray[np.float64], labels_: list[int], *, blank: int) -> Scores:
    """log p(labels | x) per item of (N, T, V) log-probabilities: CTC forward over all alignments."""
    n, frames, _ = log_probs.shape
    extended = [blank]
    for symbol in labels_:
        extended += [symbol, blank]  # blank, l1, blank, l2, ..., blank
    states = len(extended)
    emit = log_probs[:, :, extended]  # (N, T, V) -> (N, T, S)
    skip = np.zeros(states, dtype=bool)  # a state may skip the blank before it when the labels differ
    for s in range(2, states):
        skip[s] = extended[s] != blank and extended[s] != extended[s - 2]
    alpha = np.full((n, states), -np.inf)
    alpha[:, 0] = emit[:, 0, 0]
    if states > 1:
        alpha[:, 1] = emit[:, 0, 1]
    for t in range(1, frames):
        step = np.full((n, states), -np.inf)
        step[:, 1:] = alpha[:, :-1]
        jump = np.full((n, states), -np.inf)
        jump[:, 2:] = alpha[:, :-2]
        jump[:, ~skip] = -np.inf
        alpha = np.logaddexp(np.logaddexp(alpha, step), jump) + emit[:, t]
    last = alpha[:, -1] if states == 1 else np.logaddexp(alpha[:, -1], alpha[:, -2])
    return last


def windows(samples: int, rate: int) -> tuple[list[tuple[int, int]], float]:
    """Consecutive windows of WINDOW_S (longer for long recordings) covering every sample."""
    length_s = max(WINDOW_S, samples / rate / MAX_WINDOWS)
    step = max(1, round(length_s * rate))
    return [(start, min(start + step, samples)) for start in range(0, samples, step)], step / rate


async def explain_audio(model: LoadedModel, payload: Payload, opts: ExplainOptions, *,
                        timeout_s: float) -> AudioExplanation:
    task = model.config.task
    assert isinstance(task, SpeechRecognitionTask | AudioClassificationTask)
    if len(payload.blobs) != 1:
        raise InvalidInput(f"explain takes exactly one recording per request; got {len(payload.blobs)}")
    if isinstance(task, SpeechRecognitionTask) and opts.target is not None:
        raise InvalidInput(
            "'target' applies to classification; speech recognition explains its own transcript"
        )
    options.baseline(opts, task=task.type, allowed=("silence",))
    decoded = await run_in_threadpool(
        audio.decode_audio, payload.blobs[0], sample_rate=task.sample_rate, max_duration_s=task.max_duration_s
    )
    wave = decoded.samples
    chosen = options.method(opts, task=task.type, allowed=METHODS, default="occlusion")
    spans, window_s = windows(wave.size, task.sample_rate)
    plan = options.plan(chosen, opts, features=len(spans), noun="time windows", default_budget=DEFAULT_BUDGET)
    lengths = [end - start for start, end in spans]
    window_of = np.repeat(np.arange(len(spans)), lengths)  # (S,) window per sample

    def build(masks: BoolArray) -> TensorMap:
        copies = np.where(masks[:, window_of], wave[None], np.float32(0.0))  # (n, F) -> (n, S)
        inputs = {task.input: cast(model.config, task.input, copies.astype(np.float32))}
        if task.lengths_input:
            lengths = np.full(masks.shape[0], wave.size, dtype=np.int64)
            inputs[task.lengths_input] = cast(model.config, task.lengths_input, lengths)
        return inputs

    chunks = await evaluate(model, plan.coalitions.masks, build, timeout_s=timeout_s)
    count = plan.coalitions.masks.shape[0]
    common = {"model": model.name, "version": model.version, "task": task.type, "method": plan.method,
              "evaluations": count, "seed": opts.seed, "window_s": window_s, "duration_s": decoded.duration_s}
    baseline = "all samples zero"
    if isinstance(task, SpeechRecognitionTask):
        transcript, scores, words_at = _transcript_scores(model, task, chunks, wave.size, count)
        phi, efficiency = options.attribute(plan, scores)
        curve = _curve(spans, phi, task.sample_rate)
        words = [
            TimedWordScore(
                text=w.text, start_s=w.start_s, end_s=w.end_s, score=_overlap_score(curve, w.start_s, w.end_s)
            )
            for w in words_at
        ]
        return AudioExplanation(
            **common, explained=f"log-probability of the transcript '{transcript}' (CTC, all alignments)",
            target=None, score=float(scores[0]), efficiency=efficiency,
            baseline=Baseline(kind="silence", description=baseline, score=float(scores[1])),
            transcript=transcript, words=words, curve=curve,
        )
    probs = labels.class_scores(
        output({task.output: concat(chunks, task.output)}, task.output, model),
        items=count, activation="softmax" if task.logits else "none",
    )
    names = task.labels or model.config.labels
    target = options.target_index(opts, names, probs[0])
    phi, efficiency = options.attribute(plan, probs[:, target])
    label = labels.label_names(names, probs.shape[1])[target]
    ranked = labels.rank(probs[0], names, top_k=task.top_k, return_all=False)
    return AudioExplanation(
        **common,
        explained=f"probability of label '{label}'",
        target=label,
        score=float(probs[0, target]),
        efficiency=efficiency,
        baseline=Baseline(kind="silence", description=baseline, score=float(probs[1, target])),
        prediction=[LabelScore(label=n, score=s) for n, s in ranked.top],
        curve=_curve(spans, phi, task.sample_rate),
    )


def _transcript_scores(
    model: LoadedModel, task: SpeechRecognitionTask, chunks: list[TensorMap], samples: int, count: int
) -> tuple[str, Scores, list[audio.TimedSpan]]:
    """The transcript of copy 0 (the recording as sent) and its log-probability under every copy."""
    scores = output({task.output: concat(chunks, task.output)}, task.output, model)
    if scores.ndim != 3 or scores.shape[0] != count or scores.shape[2] != len(task.vocabulary):
        raise InferenceFailed(
            f"'{task.output}' has shape {list(scores.shape)}; "
            f"expected [{count}, frames, {len(task.vocabulary)}]"
        )
    if task.output_lengths:
        frames = int(np.asarray(concat(chunks, task.output_lengths)).reshape(-1)[0])
    else:
        frames = math.ceil(samples / task.sample_rate / task.frame_shift_s)
    frames = max(1, min(frames, scores.shape[1]))
    log_probs = labels.log_softmax(scores[:, :frames])  # (N, T, V)
    best = np.argmax(log_probs[0], axis=1)  # (T,)
    collapsed = [int(s) for i, s in enumerate(best) if s != task.blank_index and (i == 0 or s != best[i - 1])]
    result = audio.ctc_greedy(log_probs[0], vocabulary=task.vocabulary, blank=task.blank_index,
                              frame_shift_s=task.frame_shift_s)
    return result.text, ctc_log_likelihood(log_probs, collapsed, blank=task.blank_index), result.words


def _curve(spans: list[tuple[int, int]], phi: Scores, rate: int) -> list[TimedScore]:
    return [TimedScore(start_s=s / rate, end_s=e / rate, score=float(f"{v:.6g}"))
            for (s, e), v in zip(spans, phi.tolist(), strict=True)]


def _overlap_score(curve: list[TimedScore], start_s: float, end_s: float) -> float:
    """Sum of window scores, each weighted by the fraction of the window inside [start_s, end_s]."""
    total = 0.0
    for window in curve:
        inside = min(end_s, window.end_s) - max(start_s, window.start_s)
        if inside > 0:
            total += window.score * inside / (window.end_s - window.start_s)
    return float(f"{total:.6g}")
