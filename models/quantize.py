"""INT8 variants of published models for small CPUs, with ONNX Runtime's quantization tooling.

    deepserve-train quantize --repo REPO [cnn mlp text speech]

For each model it reads `REPO/<name>/<version>/model.onnx` (the newest version) and publishes
`REPO/<name>-int8/1/` with the same config.yaml (and side files), so FP32 and INT8 are served side by
side. Image models (cnn, mlp) get static QDQ quantization, per-tensor scales, calibrated on 256
images of the training split; text gets dynamic quantization of its MatMul/Gemm weights (activation
ranges of transformer layers vary per input, so they are measured at run time). Speech gets static QDQ
of its conv front end and output layer (Conv, MatMul), calibrated on training utterances; its GRUs stay
FP32 (ONNX Runtime's quantizer has no INT8 GRU: dynamic covers LSTM, QDQ neither) and so does the
in-graph log-mel (an INT8 STFT doubled the held-out WER). The INT8 graph is checked against the FP32
one on held-out data: argmax agreement (per item; per valid frame for speech) must be at least
`MIN_AGREEMENT`, and for speech the WER may rise by at most `MAX_WER_INCREASE` (the family tolerances
that replace the 1e-4 parity of FP32 exports); the accuracy of both and their speed at batch 1 and 32
(one thread, same run, interleaved) go into provenance and the printed table.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from models.publish import publish
from service.repository.config import CONFIG_FILE, load_config

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
"""INT8 vs FP32 argmax agreement on held-out data below this fails the family."""
MAX_WER_INCREASE = 0.015
"""Speech: a held-out WER more than 1.5 points above FP32's fails the INT8 model."""
CALIBRATION_SIZE = 256
SPEECH_CALIBRATION_SIZE = 64
"""Training utterances (the first, in batches of 8 by duration) that calibrate the speech model."""
SPEECH_FEATURES = "/features/"
"""Node-name prefix of the speech net's in-graph log-mel (models/nets/features.py), kept FP32."""
SPEED_ROUNDS = 3

Feeds = list[dict[str, np.ndarray]]


class QuantizationError(RuntimeError):
    """The INT8 model disagrees with the FP32 one beyond the family tolerance."""


@dataclass(slots=True)
class HeldOut:
    """Held-out inputs in batches, their labels, and inputs for calibration (static) and speed."""

    batches: Feeds
    labels: np.ndarray
    calibration: Feeds
    one: dict[str, np.ndarray]
    """A single item (batch 1) for the speed figures."""
    thirty_two: dict[str, np.ndarray]
    """32 items (batch 32) for the speed figures."""
    transcripts: list[str] = field(default_factory=list)
    """Speech: the reference text of each held-out item, in batch order (`labels` is then empty)."""


# ---- data per family --------------------------------------------------------------------------------


def _image_data(config_dir: Path) -> HeldOut:
    from sklearn.model_selection import train_test_split

    from models.data.images import HELDOUT_FRACTION, SPLIT_SEED, real_digits

    config = load_config(config_dir / CONFIG_FILE)
    task = config.task
    mean = float(getattr(task, "mean", [0.0])[0])
    std = float(getattr(task, "std", [1.0])[0])
    name = config.inputs[0].name if config.inputs else "image"
    x, y = real_digits()
    train_x, test_x, _, test_y = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SPLIT_SEED
    )

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a[:, None] - mean) / std).astype(np.float32)  # (N, 28, 28) -> (N, 1, 28, 28)

    test = norm(test_x)
    calib = norm(train_x[:CALIBRATION_SIZE])
    return HeldOut(
        batches=[{name: test[i : i + 64]} for i in range(0, len(test), 64)],
        labels=np.asarray(test_y),
        calibration=[{name: calib[i : i + 32]} for i in range(0, len(calib), 32)],
        one={name: test[:1]},
        thirty_two={name: test[:32]},
    )


def _text_data(config_dir: Path, model_dir: Path) -> HeldOut:
    from tokenizers import Tokenizer

    from models.data.text import encode, load, pad

    config = load_config(config_dir / CONFIG_FILE)
    max_length = getattr(config.task, "max_length", 64)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    data = load(seed=0)  # the split every text build uses (seed 0): its 3,588 test tweets
    ids = encode(tok, data.test.texts, max_length=max_length)
    names = [spec.name for spec in config.inputs] or ["input_ids", "attention_mask"]

    def feed(rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        input_ids, mask = (t.numpy() for t in pad(rows))
        arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return {n: arrays[n] for n in names}

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [feed([ids[i] for i in order[s : s + 64]]) for s in range(0, len(order), 64)]
    labels = np.asarray([data.test.labels[i] for i in order])
    return HeldOut(
        batches=batches, labels=labels, calibration=batches[:4], one=feed(ids[:1]), thirty_two=feed(ids[:32])
    )


def _speech_data(model_dir: Path) -> HeldOut:
    """The build's own held-out voices: its data regenerated from the seed and sizes in provenance.json."""
    from models.data.speech import make_speech_data
    from models.recipes.speech import pad_audio

    provenance = json.loads((model_dir / "provenance.json").read_text())
    facts = provenance["data"]
    if not str(facts["source"]).startswith("espeak-ng"):
        raise ValueError(f"{model_dir}: built from --data {facts['source']}; no held-out split to rebuild")
    data = make_speech_data(
        seed=int(provenance["train"]["seed"]),
        n_train=int(facts["train_utterances"]),
        n_test=int(facts["test_utterances"]),
        n_flite_test=int(facts["flite_test_utterances"]),
    )

    def batches(audio: Sequence[np.ndarray], size: int) -> tuple[Feeds, list[int]]:
        order = sorted(range(len(audio)), key=lambda i: len(audio[i]))  # by duration: less padding
        feeds = []
        for s in range(0, len(order), size):
            padded, lengths = pad_audio([audio[i] for i in order[s : s + size]])  # (B, S), (B,)
            feeds.append({"audio": padded.numpy(), "audio_lengths": lengths.numpy()})
        return feeds, order

    test, order = batches(data.test.audio, 32)
    calibration, _ = batches(data.train.audio[:SPEECH_CALIBRATION_SIZE], 8)
    return HeldOut(
        batches=test,
        labels=np.zeros(0, dtype=np.int64),
        calibration=calibration,
        one=batches(data.test.audio[:1], 1)[0][0],
        thirty_two=batches(data.test.audio[:32], 32)[0][0],
        transcripts=[data.test.transcripts[i] for i in order],
    )


# ---- quantize, compare, time ----------------------------------------------------------------------


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, feeds: Feeds) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_file(
    src: Path,
    dst: Path,
    *,
    static: bool,
    calibration: Feeds,
    op_types: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> None:
    """INT8 `src` -> `dst`: static QDQ (calibrated) or dynamic (weights only, activations at run time).

    `op_types` limits what is quantized (default: every op static QDQ knows; MatMul/Gemm for dynamic);
    nodes named in `exclude` stay FP32.
    """
    if static:
        # per-tensor: per-channel weights made the mlp's Gemm layers disagree with FP32 on 2% of held-out
        # digits (and the speech model's frames on 1.7%)
        quantize_static(
            str(src),
            str(dst),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None,
            nodes_to_exclude=list(exclude),
        )
    else:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types or ["MatMul", "Gemm"]),
            nodes_to_exclude=list(exclude),
        )


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _predict(session: ort.InferenceSession, batches: Feeds) -> np.ndarray:
    output = session.get_outputs()[0].name
    classes: np.ndarray = np.concatenate([session.run([output], b)[0] for b in batches]).argmax(-1)
    return classes


def _compare_classes(
    fp32: ort.InferenceSession, int8: ort.InferenceSession, data: HeldOut
) -> dict[str, float]:
    p32, p8 = _predict(fp32, data.batches), _predict(int8, data.batches)
    return {
        "fp32_accuracy": round(float((p32 == data.labels).mean()), 5),
        "int8_accuracy": round(float((p8 == data.labels).mean()), 5),
        "argmax_agreement": round(float((p32 == p8).mean()), 5),
    }


def _compare_ctc(
    fp32: ort.InferenceSession, int8: ort.InferenceSession, data: HeldOut, vocabulary: list[str], blank: int
) -> dict[str, float]:
    """WER of greedy CTC transcripts (the speech recipe's scoring) and argmax agreement per valid frame."""
    from models.nets.speech import greedy_decode
    from models.recipes.speech import error_rates

    texts: dict[str, list[str]] = {"fp32": [], "int8": []}
    frames: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
    for batch in data.batches:
        for kind, session in (("fp32", fp32), ("int8", int8)):
            log_probs, lengths = session.run(None, batch)  # (B, T, V), (B,)
            texts[kind] += greedy_decode(log_probs, lengths, vocabulary, blank=blank)
            frames[kind] += [row[:n] for row, n in zip(log_probs.argmax(-1), lengths, strict=True)]
    wer = {kind: error_rates(data.transcripts, texts[kind])[0] for kind in texts}
    agreement = np.concatenate(frames["fp32"]) == np.concatenate(frames["int8"])
    # accuracy here is word accuracy, 1 - WER, so the printed table has one column for every family
    return {
        "fp32_wer": round(wer["fp32"], 5),
        "int8_wer": round(wer["int8"], 5),
        "wer_change": round(wer["int8"] - wer["fp32"], 5),
        "fp32_accuracy": round(1 - wer["fp32"], 5),
        "int8_accuracy": round(1 - wer["int8"], 5),
        "argmax_agreement": round(float(agreement.mean()), 5),
    }


def _items_per_s(run: Callable[[], Any], items: int, *, seconds: float = 1.0) -> float:
    run()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += 1
    return items * count / (time.perf_counter() - started)


def speed(fp32: ort.InferenceSession, int8: ort.InferenceSession, data: HeldOut) -> dict[str, float]:
    """INT8/FP32 items/s ratios at batch 1 and 32, interleaved rounds, best of each (one thread each)."""
    best: dict[str, float] = {}
    for _ in range(SPEED_ROUNDS):
        thirty_two = len(next(iter(data.thirty_two.values())))
        for label, feed, items in (("b1", data.one, 1), ("b32", data.thirty_two, thirty_two)):
            for kind, session in (("fp32", fp32), ("int8", int8)):
                rate = _items_per_s(partial(session.run, None, feed), items)
                best[f"{kind}_{label}"] = max(best.get(f"{kind}_{label}", 0.0), rate)
    return {
        **{k: round(v, 1) for k, v in best.items()},
        "ratio_b1": round(best["int8_b1"] / best["fp32_b1"], 3),
        "ratio_b32": round(best["int8_b32"] / best["fp32_b32"], 3),
    }


@dataclass(slots=True)
class QuantResult:
    name: str
    method: str
    figures: dict[str, float]
    path: Path


@dataclass(frozen=True, slots=True)
class Plan:
    """How one family is quantized: static QDQ or dynamic, which ops, which nodes stay FP32."""

    static: bool
    method: str
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()


def _plan(name: str, folder: Path, model_dir: Path) -> tuple[Plan, HeldOut]:
    if name in ("cnn", "mlp"):
        return Plan(static=True, method="static QDQ, per-tensor, 256 training images"), _image_data(folder)
    if name in ("text", "minilm"):
        return Plan(static=False, method="dynamic, MatMul/Gemm weights"), _text_data(folder, model_dir)
    if name == "speech":
        graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
        features = tuple(n.name for n in graph.node if n.name.startswith(SPEECH_FEATURES))
        method = (
            f"static QDQ, per-tensor, Conv/MatMul (conv front end, output layer), "
            f"{SPEECH_CALIBRATION_SIZE} training utterances; log-mel and GRUs FP32"
        )
        plan = Plan(static=True, method=method, op_types=("Conv", "MatMul"), exclude=features)
        return plan, _speech_data(model_dir)
    raise ValueError(f"no held-out data for '{name}' in quantize (cnn, mlp, text, minilm, speech)")


def tolerance_failure(name: str, figures: dict[str, float]) -> str | None:
    """Why the INT8 model misses its family's tolerance, or None."""
    agreement = figures["argmax_agreement"]
    if agreement < MIN_AGREEMENT:
        unit = "valid frames" if "wer_change" in figures else "items"
        return f"{name}: INT8 agrees with FP32 on {agreement:.2%} of held-out {unit} (< {MIN_AGREEMENT:.0%})"
    if figures.get("wer_change", 0.0) > MAX_WER_INCREASE:
        return (
            f"{name}: INT8 held-out WER {figures['int8_wer']:.2%} is {figures['wer_change'] * 100:.2f} "
            f"points above FP32's {figures['fp32_wer']:.2%} (> {MAX_WER_INCREASE * 100:.1f})"
        )
    return None


def quantize_model(repo: Path, name: str) -> QuantResult:
    """Quantize the newest version of REPO/<name>, check it on held-out data, publish REPO/<name>-int8/1."""
    folder = repo / name
    versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise FileNotFoundError(
            f"{folder} has no version folder; build it first (deepserve-train build {name})"
        )
    model_dir = folder / str(versions[-1])
    plan, data = _plan(name, folder, model_dir)
    config = load_config(folder / CONFIG_FILE)
    with tempfile.TemporaryDirectory(prefix="deepserve-int8-") as tmp:
        dst = Path(tmp) / "model.onnx"
        quantize_file(
            model_dir / "model.onnx",
            dst,
            static=plan.static,
            calibration=data.calibration,
            op_types=plan.op_types,
            exclude=plan.exclude,
        )
        fp32, int8 = _session(model_dir / "model.onnx"), _session(dst)
        if data.transcripts:
            task = config.task
            compared = _compare_ctc(
                fp32, int8, data, list(getattr(task, "vocabulary", [])), int(getattr(task, "blank_index", 0))
            )
        else:
            compared = _compare_classes(fp32, int8, data)
        figures = {
            **compared,
            "size_ratio": round(dst.stat().st_size / (model_dir / "model.onnx").stat().st_size, 3),
            **speed(fp32, int8, data),
        }
        logger.info("%s int8: %s", name, figures)
        failure = tolerance_failure(name, figures)
        if failure:
            raise QuantizationError(f"{failure}; not published")
        kind = "static QDQ" if plan.static else "dynamic"
        config = config.model_copy(
            update={
                "name": None,
                "provenance": {},
                "description": f"INT8 ({kind}) of {name}: {config.description}",
            }
        )
        side = {
            p.name: p
            for p in model_dir.iterdir()
            if p.is_file() and p.name not in ("model.onnx", "provenance.json")
        }
        tolerance: dict[str, float] = {"min_agreement": MIN_AGREEMENT}
        if data.transcripts:
            tolerance["max_wer_increase"] = MAX_WER_INCREASE
        provenance = {
            "family": f"{name}-int8",
            "quantized_from": str(model_dir),
            "method": plan.method,
            **tolerance,
            "figures": figures,
            "threads": 1,
        }
        path = publish(
            repo=repo,
            name=f"{name}-int8",
            version=1,
            onnx_file=dst,
            config=config,
            side_files=side,
            provenance=provenance,
        )
    return QuantResult(name=name, method=plan.method, figures=figures, path=path)


def copy_repo(src: Path, dst: Path) -> None:
    """A writable copy of a read-only model repository (the demo builds)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
