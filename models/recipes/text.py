"""The `text` family: tweet sentiment (negative / neutral / positive) with a small transformer encoder.

Data, cleaning, the seeded stratified split and the WordPiece tokenizer come from models/data/text.py;
the net is models/nets/text.py. Its encoder is first pretrained on the training texts alone (masked
tokens predicted from context), then trained as a classifier; the epoch with the best validation macro
F1 is kept. A TF-IDF + logistic-regression baseline is trained on the same split in
the same build and reported beside the transformer. The export takes (input_ids, attention_mask) with
dynamic batch and sequence axes; the build fails if ONNX Runtime and torch disagree, or if a padded
batch answers differently from its items run alone. tokenizer.json is published beside model.onnx and
the server tokenizes with it exactly as training did (same normalizer, [CLS] first, cut at max_length).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from tokenizers import Tokenizer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from models.data.text import (
    TextData,
    TextSplit,
    TokenBatches,
    encode,
    label_counts,
    load,
    pad,
    train_tokenizer,
)
from models.export import export_onnx
from models.nets.text import MaskedTokens, TextClassifier, TextConfig
from models.publish import publish
from models.recipes.base import BuildOptions, FamilyResult
from models.train import TrainConfig, fit, seed_everything
from models.verify import ParityError, check_parity
from service.repository.config import ModelConfig, TensorSpec, TextClassificationTask

logger = logging.getLogger(__name__)

INPUTS = ["input_ids", "attention_mask"]
OUTPUT = "logits"
DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    OUTPUT: {0: "batch"},
}
OPSET = 17
ATOL = 1e-4
TOKENIZER_FILE = "tokenizer.json"
UNK_ID = 1
"""[UNK] in every tokenizer models/data/text.py trains ([PAD]=0, [UNK]=1, [CLS]=2)."""


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much data, how big a tokenizer and net, how long to train."""

    limit: int | None
    """Rows (stratified) taken from the cleaned corpus before splitting; None: all."""
    vocab_size: int
    net: TextConfig
    train: TrainConfig
    label_smoothing: float = 0.1
    token_dropout: float = 0.0
    """Training only: each token but [CLS] becomes [UNK] with this probability (word dropout)."""
    pretrain: TrainConfig | None = None
    """Masked-token pretraining of the encoder on the training texts (labels unused) before the
    classifier is trained; None: start from random weights."""
    mask_fraction: float = 0.15


FULL = Sizes(
    limit=None,
    vocab_size=8000,
    net=TextConfig(max_length=64, n_layer=2, n_head=4, n_embd=128, ffn_mult=2, dropout=0.1, embd_dropout=0.1),
    train=TrainConfig(epochs=2, batch_size=64, lr=1e-3, weight_decay=0.05, schedule="onecycle"),
    token_dropout=0.1,
    pretrain=TrainConfig(epochs=6, batch_size=64, lr=2e-3, weight_decay=0.01, schedule="onecycle"),
)
QUICK = Sizes(
    limit=1500,
    vocab_size=1500,
    net=TextConfig(max_length=64, n_layer=1, n_head=2, n_embd=32, ffn_mult=2),
    train=TrainConfig(epochs=2, batch_size=32, lr=3e-3, weight_decay=0.01, schedule="onecycle"),
    token_dropout=0.1,
    pretrain=TrainConfig(epochs=1, batch_size=32, lr=3e-3, weight_decay=0.01, schedule="onecycle"),
)


# ---- the baseline ----------------------------------------------------------------------------------


def baseline(data: TextData) -> dict[str, float]:
    """TF-IDF (word uni- and bigrams, sublinear tf) + multinomial logistic regression, scored on test.

    newton-cg converges in a handful of exact steps, so the baseline is deterministic and fast.
    """
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)
    features = vectorizer.fit_transform(data.train.texts)
    classifier = LogisticRegression(C=2.0, solver="newton-cg", max_iter=200)
    classifier.fit(features, data.train.labels)
    predicted = classifier.predict(vectorizer.transform(data.test.texts))
    return {
        "baseline_accuracy": round(float(accuracy_score(data.test.labels, predicted)), 5),
        "baseline_macro_f1": round(float(f1_score(data.test.labels, predicted, average="macro")), 5),
    }


# ---- the transformer -------------------------------------------------------------------------------


def predict_logits(net: nn.Module, ids: Sequence[Sequence[int]], *, batch_size: int = 256) -> Tensor:
    """Logits (N, classes) for token id lists, batched by length (padding does not change answers)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(net.parameters()).device
    logits: Tensor | None = None
    net.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out = net(*(t.to(device) for t in pad([ids[i] for i in chunk]))).cpu()
            if logits is None:
                logits = torch.empty(len(ids), out.shape[1])
            logits[chunk] = out
    assert logits is not None, "no texts to predict"
    return logits


def score(logits: Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro F1 and cross-entropy of logits against integer labels."""
    y = torch.tensor(list(labels), dtype=torch.int64)
    pred = logits.argmax(1)
    return {
        "accuracy": round(float((pred == y).float().mean()), 5),
        "macro_f1": round(float(f1_score(y.numpy(), pred.numpy(), average="macro")), 5),
        "loss": round(float(F.cross_entropy(logits, y)), 5),
    }


def pretrain(net: TextClassifier, ids: Sequence[Sequence[int]], cfg: TrainConfig, *, fraction: float,
             opts: BuildOptions) -> list[dict[str, float]]:
    """Masked-token training of `net`'s encoder in place.

    `fraction` of the tokens (not [CLS]) become [UNK].
    """
    batches = TokenBatches(ids, [0] * len(ids), batch_size=cfg.batch_size, seed=opts.seed + 1)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        input_ids, mask, _ = batch
        where = (torch.rand(input_ids.shape, device=input_ids.device) < fraction) & (mask > 0)
        where[:, 0] = False  # [CLS]
        if not bool(where.any()):
            where[0, mask[0].sum() - 1] = True  # at least one target per batch
        logits = model(input_ids.masked_fill(where, UNK_ID), mask, where)
        target = input_ids[where]
        return F.cross_entropy(logits, target), {"acc": float((logits.argmax(1) == target).float().mean())}

    return fit(MaskedTokens(net), DataLoader(batches, batch_size=None), cfg=cfg, loss_fn=loss_fn,
               desc="text pretrain", progress=opts.progress, device=opts.device)


def train_net(
    data: TextData, tok: Tokenizer, sizes: Sizes, *, opts: BuildOptions
) -> tuple[TextClassifier, list[dict[str, float]], list[dict[str, float]]]:
    """Train a fresh net: (net, classifier history, pretraining history).

    The weights kept are those of the epoch with the best validation macro F1.
    """
    cfg = replace(sizes.net, vocab_size=tok.get_vocab_size(), n_classes=len(data.labels))
    net = TextClassifier(cfg)
    max_length = cfg.max_length
    train_ids = encode(tok, data.train.texts, max_length=max_length)
    val_ids = encode(tok, data.validation.texts, max_length=max_length)
    batches = TokenBatches(train_ids, data.train.labels, batch_size=sizes.train.batch_size, seed=opts.seed)
    loader: DataLoader[Any] = DataLoader(batches, batch_size=None)
    pretrain_history: list[dict[str, float]] = []
    if sizes.pretrain is not None:
        pretrain_history = pretrain(net, train_ids, sizes.pretrain, fraction=sizes.mask_fraction, opts=opts)
    smoothing, p_drop = sizes.label_smoothing, sizes.token_dropout

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        input_ids, mask, y = batch
        if p_drop > 0:  # global torch RNG, seeded by seed_everything
            drop = (torch.rand(input_ids.shape, device=input_ids.device) < p_drop) & (mask > 0)
            drop[:, 0] = False  # keep [CLS]
            input_ids = input_ids.masked_fill(drop, UNK_ID)
        logits = model(input_ids, mask)
        acc = float((logits.argmax(1) == y).float().mean())
        return F.cross_entropy(logits, y, label_smoothing=smoothing), {"acc": acc}

    best: dict[str, Any] = {"f1": -1.0, "state": None}

    def validate(model: nn.Module) -> dict[str, float]:
        metrics = score(predict_logits(model, val_ids), data.validation.labels)
        if metrics["macro_f1"] > best["f1"]:
            best["f1"], best["state"] = metrics["macro_f1"], copy.deepcopy(model.state_dict())
        return metrics

    train_cfg = sizes.train if opts.epochs is None else replace(sizes.train, epochs=opts.epochs)
    history = fit(net, loader, cfg=train_cfg, loss_fn=loss_fn, evaluate=validate, desc="text",
                  progress=opts.progress, device=opts.device)
    net = net.cpu()
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    return net.eval(), history, pretrain_history


# ---- export checks ---------------------------------------------------------------------------------


def parity_cases(ids: Sequence[Sequence[int]], *, short: int = 12) -> dict[str, tuple[Tensor, Tensor]]:
    """Batch 1 and 8 at two sequence lengths: texts cut to `short` tokens, and the longest texts (ragged)."""
    by_length = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    short_ids = [list(ids[i][:short]) for i in by_length[len(ids) // 2 :][:8]]
    long_ids = [list(ids[i]) for i in by_length[-8:]]
    return {
        "batch1_short": pad(short_ids[:1]),
        "batch1_long": pad(long_ids[-1:]),
        "batch8_short": pad(short_ids),
        "batch8_long": pad(long_ids),
    }


def padding_drift(onnx_path: Path, input_ids: Tensor, mask: Tensor, *, pad_to: int) -> float:
    """Max abs diff between each item run alone and the same item in a padded batch (ONNX Runtime).

    The batch is padded further, to `pad_to` tokens, as the server's batcher may pad a request to a
    longer neighbour's length.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    width = max(pad_to, input_ids.shape[1])
    ids = np.zeros((input_ids.shape[0], width), dtype=np.int64)
    keep = np.zeros_like(ids)
    ids[:, : input_ids.shape[1]] = input_ids.numpy()
    keep[:, : mask.shape[1]] = mask.numpy()
    (batch,) = session.run(None, {"input_ids": ids, "attention_mask": keep})
    worst = 0.0
    for i, n in enumerate(keep.sum(axis=1).tolist()):
        (alone,) = session.run(None, {"input_ids": ids[i : i + 1, :n], "attention_mask": keep[i : i + 1, :n]})
        worst = max(worst, float(np.abs(alone[0] - batch[i]).max()))
    return worst


def export_and_verify(
    net: TextClassifier, onnx_path: Path, test_ids: Sequence[Sequence[int]]
) -> dict[str, float]:
    """Export to `onnx_path`, then check parity per case and padding invariance; raises ParityError."""
    cases = parity_cases(test_ids)
    export_onnx(net, cases["batch8_short"], onnx_path, input_names=INPUTS, output_names=[OUTPUT],
                dynamic_axes=DYNAMIC_AXES, opset=OPSET)
    parity = check_parity(net, onnx_path, cases, input_names=INPUTS, atol=ATOL)
    drift = padding_drift(onnx_path, *cases["batch8_long"], pad_to=net.cfg.max_length)
    if not drift <= ATOL:
        raise ParityError(f"padded batch differs from single items by {drift:.3g} > atol {ATOL:g}")
    parity["padded_vs_single"] = drift
    return parity


def model_config(labels: Sequence[str], *, cfg: TextConfig) -> ModelConfig:
    names, max_length = list(labels), cfg.max_length
    return ModelConfig(
        description=f"Tweet sentiment ({', '.join(names)}): a {cfg.n_layer}-layer transformer encoder over "
        f"WordPiece tokens (tokenizer.json, at most {max_length}); logits out.",
        inputs=[TensorSpec(name=name, datatype="INT64", shape=[-1, -1], pad_value=0) for name in INPUTS],
        outputs=[TensorSpec(name=OUTPUT, datatype="FP32", shape=[-1, len(names)])],
        max_batch_size=64,
        max_queue_delay_ms=2.0,
        labels=names,
        task=TextClassificationTask(
            tokenizer=TOKENIZER_FILE,
            input_ids=INPUTS[0],
            attention_mask=INPUTS[1],
            output=OUTPUT,
            max_length=max_length,
            truncation="truncate",
            lowercase=False,  # the tokenizer's normalizer lower-cases (and maps URLs, @users) itself
            labels=names,
            top_k=len(names),
        ),
    )


# ---- the recipe ------------------------------------------------------------------------------------


def _data_facts(data: TextData) -> dict[str, Any]:
    def part(split: TextSplit) -> dict[str, Any]:
        return {"size": len(split), "labels": label_counts(split.labels, data.labels)}

    return {"source": data.source, "train": part(data.train), "validation": part(data.validation),
            "test": part(data.test), "dropped": data.dropped}


@dataclass(slots=True)
class Trained:
    """A trained net with its tokenizer, data and held-out metrics: what export and publish need."""

    data: TextData
    tok: Tokenizer
    net: TextClassifier
    history: list[dict[str, float]]
    pretrain_history: list[dict[str, float]]
    metrics: dict[str, float]
    sizes: Sizes
    seconds: dict[str, float]
    """Wall seconds per stage: baseline, train."""

    @property
    def beats_baseline(self) -> bool:
        m = self.metrics
        return m["accuracy"] >= m["baseline_accuracy"] and m["macro_f1"] >= m["baseline_macro_f1"]


class TextRecipe:
    name = "text"
    description = "Tweet sentiment (negative/neutral/positive): transformer encoder + WordPiece tokenizer"

    def build(self, opts: BuildOptions) -> FamilyResult:
        started = time.monotonic()
        result = self.publish_trained(self.train(opts), opts)
        result.seconds = time.monotonic() - started
        return result

    def train(self, opts: BuildOptions) -> Trained:
        """Load and split the data, train the tokenizer, the baseline and the net; score both on test."""
        sizes = QUICK if opts.quick else FULL
        seed_everything(opts.seed)
        data = load(seed=opts.seed, data=opts.data, limit=sizes.limit)
        tok = train_tokenizer(data.train.texts, vocab_size=sizes.vocab_size)
        # the server sets this too; for anyone using the file alone
        tok.enable_truncation(sizes.net.max_length)

        started = time.monotonic()
        base = baseline(data)
        baseline_s = time.monotonic() - started
        started = time.monotonic()
        net, history, pretrain_history = train_net(data, tok, sizes, opts=opts)
        train_s = time.monotonic() - started

        test_ids = encode(tok, data.test.texts, max_length=net.cfg.max_length)
        metrics = {**score(predict_logits(net, test_ids), data.test.labels), **base,
                   "heldout_size": float(len(data.test))}
        trained = Trained(data=data, tok=tok, net=net, history=history, pretrain_history=pretrain_history,
                          metrics=metrics, sizes=sizes,
                          seconds={"baseline": round(baseline_s, 1), "train": round(train_s, 1)})
        logger.info("text: %s", "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if not trained.beats_baseline:
            logger.warning(
                "text: the transformer does not match the TF-IDF baseline on accuracy and macro F1"
            )
        return trained

    def publish_trained(self, trained: Trained, opts: BuildOptions) -> FamilyResult:
        """Export, verify (parity, padding) and publish with tokenizer.json and a text task config."""
        started = time.monotonic()
        data, tok, net, sizes = trained.data, trained.tok, trained.net, trained.sizes
        max_length = net.cfg.max_length
        with tempfile.TemporaryDirectory(prefix="deepserve-text-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            parity = export_and_verify(net, onnx_path, encode(tok, data.test.texts, max_length=max_length))
            provenance = {
                "family": self.name,
                "data": _data_facts(data),
                "seed": opts.seed,
                "quick": opts.quick,
                "tokenizer": {
                    "type": "WordPiece", "vocab_size": tok.get_vocab_size(), "trained_on": "train split",
                    "lowercase": True, "max_length": max_length,
                },
                "net": {**asdict(net.cfg), "parameters": sum(p.numel() for p in net.parameters())},
                "pretrain": (
                    _train_facts(sizes.pretrain, trained.pretrain_history, mask_fraction=sizes.mask_fraction)
                    if sizes.pretrain else None
                ),
                "train": {
                    **_train_facts(
                        sizes.train,
                        trained.history,
                        label_smoothing=sizes.label_smoothing,
                        token_dropout=sizes.token_dropout,
                    ),
                    "kept_epoch": _best_epoch(trained.history),
                },
                "baseline": {
                    "model": "TF-IDF word 1-2 grams (min_df 2, sublinear tf) + logistic regression C=2",
                    "trained_on": "train split",
                },
                "metrics": trained.metrics,
                "beats_baseline": trained.beats_baseline,
                "parity_max_abs_diff": parity,
                "parity_atol": ATOL,
                "seconds": trained.seconds,
            }
            path = publish(repo=opts.out, name=self.name, version=opts.version, onnx_file=onnx_path,
                           config=model_config(data.labels, cfg=net.cfg),
                           side_files={TOKENIZER_FILE: tok.to_str()}, provenance=provenance)
        return FamilyResult(name=self.name, metrics=trained.metrics, parity=parity, path=path,
                            seconds=time.monotonic() - started, net=net)


def _train_facts(cfg: TrainConfig, history: Sequence[dict[str, float]], **more: Any) -> dict[str, Any]:
    """A training stage for provenance: its config, what it ran and each epoch's figures."""
    epochs = [{k: round(v, 5) for k, v in entry.items()} for entry in history]
    return {**asdict(cfg), **more, "epochs": len(history), "history": epochs}


def _best_epoch(history: Sequence[dict[str, float]]) -> int:
    """The epoch whose weights were kept: the first with the best validation macro F1."""
    scores = [entry.get("val_macro_f1", -1.0) for entry in history]
    return int(history[scores.index(max(scores))]["epoch"]) if history else 0


TEXT = TextRecipe()
RECIPES = (TEXT,)
