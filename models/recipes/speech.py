"""The `speech` family: synthesise commands and digit strings, train a CTC recogniser, publish it.

Data comes from espeak-ng and flite (models/data/speech.py) with whole voices held out; the net
(models/nets/speech.py) computes its log-mel features inside the graph, so the published model takes
raw 16 kHz audio plus per-item lengths. The build fails if ONNX Runtime and torch disagree, or if a
padded batch answers differently from its items run alone.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from models.data.speech import (
    SAMPLE_RATE,
    VOCABULARY,
    SpeechData,
    SpeechSet,
    encode,
    load_folder,
    make_speech_data,
    split_set,
)
from models.export import export_onnx
from models.nets.speech import SpeechConfig, SpeechNet, greedy_decode
from models.publish import publish
from models.recipes.base import BuildOptions, FamilyResult
from models.train import TrainConfig, fit, seed_everything
from models.verify import ParityError, check_parity
from service.repository.config import ModelConfig, SpeechRecognitionTask, TensorSpec

logger = logging.getLogger(__name__)

INPUTS = ["audio", "audio_lengths"]
OUTPUTS = ["log_probs", "frame_lengths"]
DYNAMIC_AXES = {"audio": {0: "batch", 1: "samples"}, "audio_lengths": {0: "batch"},
                "log_probs": {0: "batch", 1: "frames"}, "frame_lengths": {0: "batch"}}
ATOL = 1e-4


@dataclass(frozen=True, slots=True)
class Sizes:
    n_train: int
    n_test: int
    n_flite_test: int
    epochs: int
    batch_size: int


# Sized for about 8 minutes on 2 CPU cores (torch at 1 thread): 11 epochs of 94 batches. Output frames
# every 30 ms (stride 3) keep the GRU short and still leave room for the fastest speech (~22 chars/s);
# two BiGRU layers (WER 14.6%) beat one wider one (20.7%) at 8 epochs; 11 epochs reach ~8%.
FULL = Sizes(n_train=3000, n_test=400, n_flite_test=160, epochs=11, batch_size=32)
QUICK = Sizes(n_train=160, n_test=32, n_flite_test=16, epochs=2, batch_size=16)
NET = SpeechConfig(channels=128, hidden=112, layers=2, stride=3)
LR = 4e-3


# ---- batches -------------------------------------------------------------------------------------


class Utterances(Dataset[tuple[Tensor, list[int]]]):
    def __init__(self, data: SpeechSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, list[int]]:
        return torch.from_numpy(self.data.audio[i]), encode(self.data.transcripts[i])


class LengthBuckets(Sampler[list[int]]):
    """Batches of similar duration (less padding to compute), in a seeded random order each epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        jitter = self.rng.uniform(0.8, 1.2, size=len(self.lengths))  # vary bucket neighbours per epoch
        order = np.argsort(self.lengths * jitter)
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        for j in self.rng.permutation(len(batches)):
            yield batches[j]


def pad_audio(items: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad waveforms to the longest: (audio (B, S) float32, audio_lengths (B,) int64)."""
    lengths = torch.tensor([len(a) for a in items], dtype=torch.int64)
    audio = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for i, a in enumerate(items):
        audio[i, : len(a)] = torch.as_tensor(a)
    return audio, lengths


def collate(batch: Sequence[tuple[Tensor, list[int]]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    audio, lengths = pad_audio([a for a, _ in batch])
    targets = torch.tensor([c for _, t in batch for c in t], dtype=torch.int64)
    target_lengths = torch.tensor([len(t) for _, t in batch], dtype=torch.int64)
    return audio, lengths, targets, target_lengths


def ctc_loss(net: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
    audio, lengths, targets, target_lengths = batch
    log_probs, frames = net(audio, lengths)
    loss = nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, frames, target_lengths, blank=0, zero_infinity=True
    )  # (B, T, V) -> (T, B, V) as ctc_loss wants
    return loss, {}


# ---- evaluation ----------------------------------------------------------------------------------


def transcribe(net: nn.Module, audio: Sequence[np.ndarray], *, batch_size: int = 32) -> list[str]:
    """Greedy CTC transcripts from the torch net, batched by duration."""
    order = np.argsort([len(a) for a in audio])
    texts: list[str] = [""] * len(audio)
    net.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            log_probs, frames = net(*pad_audio([audio[i] for i in chunk]))
            for i, text in zip(
                chunk, greedy_decode(log_probs.numpy(), frames.numpy(), VOCABULARY), strict=True
            ):
                texts[i] = text
    return texts


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, float]:
    """(word error rate, character error rate) over a corpus."""
    words = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True))
    chars = sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True))
    return words / max(1, sum(len(r.split()) for r in refs)), chars / max(1, sum(len(r) for r in refs))


# ---- export checks -------------------------------------------------------------------------------


def parity_cases(test: SpeechSet) -> dict[str, tuple[Tensor, Tensor]]:
    """Batch 1 and 8 at two durations: up to 1 s, and the longest held-out items (ragged, padded)."""
    by_length = sorted(range(len(test)), key=lambda i: len(test.audio[i]))
    short = [test.audio[i][:SAMPLE_RATE] for i in by_length[:8]]
    long = [test.audio[i] for i in by_length[-8:]]
    return {"batch1_short": pad_audio(short[:1]), "batch1_long": pad_audio(long[-1:]),
            "batch8_short": pad_audio(short), "batch8_long": pad_audio(long)}


def padding_drift(onnx_path: Path, audio: Tensor, lengths: Tensor) -> float:
    """Max abs diff, over valid frames, between a padded batch and each item run alone (ONNX Runtime)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch_lp, batch_fl = session.run(None, {"audio": audio.numpy(), "audio_lengths": lengths.numpy()})
    worst = 0.0
    for i, n in enumerate(lengths.tolist()):
        one_lp, one_fl = session.run(
            None, {"audio": audio[i : i + 1, :n].numpy(), "audio_lengths": lengths[i : i + 1].numpy()}
        )
        if one_fl[0] != batch_fl[i]:
            raise ParityError(f"item {i}: {one_fl[0]} frames alone, {batch_fl[i]} in a padded batch")
        worst = max(worst, float(np.abs(one_lp[0] - batch_lp[i, : one_fl[0]]).max()))
    return worst


def export(net: SpeechNet, path: Path, example: tuple[Tensor, Tensor]) -> None:
    with warnings.catch_warnings():
        # The tracer warns about nn.GRU's Python-side checks and an initial state sized from the example
        # batch; parity at batch 1 and 8 (and the padding check) prove the graph is batch-independent.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*", category=UserWarning)
        export_onnx(net, example, path, input_names=INPUTS, output_names=OUTPUTS, dynamic_axes=DYNAMIC_AXES)


def model_config(net: SpeechNet) -> ModelConfig:
    vocab = len(VOCABULARY)
    return ModelConfig(
        description="Speech commands and digit strings -> text (CTC, greedy decoding); raw 16 kHz audio in.",
        inputs=[TensorSpec(name="audio", datatype="FP32", shape=[-1, -1], pad_value=0.0),
                TensorSpec(name="audio_lengths", datatype="INT64", shape=[-1])],
        outputs=[TensorSpec(name="log_probs", datatype="FP32", shape=[-1, -1, vocab]),
                 TensorSpec(name="frame_lengths", datatype="INT64", shape=[-1])],
        max_batch_size=16,
        task=SpeechRecognitionTask(input=INPUTS[0], lengths_input=INPUTS[1], output=OUTPUTS[0],
                                   output_lengths=OUTPUTS[1], sample_rate=SAMPLE_RATE, vocabulary=VOCABULARY,
                                   blank_index=0, frame_shift_s=net.cfg.frame_shift_s),
    )


# ---- the recipe ----------------------------------------------------------------------------------


def load_data(opts: BuildOptions, sizes: Sizes) -> SpeechData:
    if opts.data is None:
        return make_speech_data(seed=opts.seed, n_train=sizes.n_train, n_test=sizes.n_test,
                                n_flite_test=sizes.n_flite_test, progress=opts.progress)
    train, test = split_set(load_folder(opts.data), holdout=0.1, seed=opts.seed)
    return SpeechData(train=train, test=test, test_flite=SpeechSet(), train_voices=[str(opts.data)],
                      test_voices=[], flite_voices=[])


class SpeechRecipe:
    name = "speech"
    description = (
        "CTC speech recogniser (log-mel in the graph, BiGRU) on synthesised spoken commands and digits"
    )

    def build(self, opts: BuildOptions) -> FamilyResult:
        started = time.monotonic()
        sizes = QUICK if opts.quick else FULL
        seed_everything(opts.seed)
        data = load_data(opts, sizes)
        synth_s = time.monotonic() - started

        net = SpeechNet(NET)
        loader = DataLoader(
            Utterances(data.train),
            collate_fn=collate,
            batch_sampler=LengthBuckets([len(a) for a in data.train.audio], sizes.batch_size, opts.seed),
        )
        probe = data.test.audio[:64]

        def evaluate(net: nn.Module) -> dict[str, float]:
            wer, cer = error_rates(data.test.transcripts[:64], transcribe(net, probe))
            return {"wer": wer, "cer": cer}

        cfg = TrainConfig(
            epochs=opts.epochs or sizes.epochs, batch_size=sizes.batch_size, lr=LR, weight_decay=1e-2
        )
        train_started = time.monotonic()
        history = fit(net, loader, cfg=cfg, loss_fn=ctc_loss, evaluate=evaluate, desc="speech",
                      progress=opts.progress, device=opts.device)
        train_s = time.monotonic() - train_started
        net = net.to("cpu").eval()

        wer, cer = error_rates(data.test.transcripts, transcribe(net, data.test.audio))
        metrics = {"wer": wer, "cer": cer}
        if len(data.test_flite):
            metrics["wer_flite"] = error_rates(
                data.test_flite.transcripts, transcribe(net, data.test_flite.audio)
            )[0]
        logger.info("speech: %s", "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        with tempfile.TemporaryDirectory(prefix="deepserve-speech-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            cases = parity_cases(data.test)
            export(net, onnx_path, cases["batch8_short"])
            parity = check_parity(net, onnx_path, cases, input_names=INPUTS, atol=ATOL)
            drift = padding_drift(onnx_path, *cases["batch8_long"])
            if not drift <= ATOL:
                raise ParityError(f"padded batch differs from single items by {drift:.3g} > atol {ATOL:g}")
            parity["padded_vs_single"] = drift
            provenance = {
                "family": self.name,
                "data": {
                    "source": str(opts.data) if opts.data else "espeak-ng + flite (synthesised)",
                    "train_voices": data.train_voices,
                    "held_out_voices": data.test_voices,
                    "flite_held_out_voices": data.flite_voices,
                    "train_utterances": len(data.train),
                    "train_hours": round(data.train.seconds() / 3600, 3),
                    "test_utterances": len(data.test),
                    "flite_test_utterances": len(data.test_flite),
                },
                "net": {
                    "channels": NET.channels,
                    "hidden": NET.hidden,
                    "layers": NET.layers,
                    "stride": NET.stride,
                    "n_mels": NET.features.n_mels,
                    "parameters": sum(p.numel() for p in net.parameters()),
                },
                "train": {
                    "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": opts.seed,
                    "quick": opts.quick, "last_epoch": history[-1] if history else {},
                },
                "metrics": metrics,
                "parity": parity,
                "synthesis_seconds": round(synth_s, 1),
                "training_seconds": round(train_s, 1),
            }
            path = publish(repo=opts.out, name=self.name, version=opts.version, onnx_file=onnx_path,
                           config=model_config(net), provenance=provenance)
        return FamilyResult(name=self.name, metrics=metrics, parity=parity, path=path,
                            seconds=time.monotonic() - started, net=net)


RECIPES = [SpeechRecipe()]
