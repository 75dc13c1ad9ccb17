"""A small transformer-encoder text classifier in plain torch.nn (nanoGPT style, bidirectional).

(input_ids, attention_mask) -> logits. Padding never changes the answer: padded keys get exactly zero
attention weight and pooling is a masked mean, so a text alone and the same text padded in a batch
give the same logits (to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(slots=True)
class TextConfig:
    vocab_size: int = 8000
    max_length: int = 64
    n_classes: int = 3
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    ffn_mult: int = 2
    dropout: float = 0.1
    embd_dropout: float = 0.1


class SelfAttention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        # Widths come from the config, not from tensor sizes: the ONNX tracer warns on (and freezes)
        # sizes turned into Python numbers.
        self.n_head, self.n_embd, self.head_size = cfg.n_head, cfg.n_embd, cfg.n_embd // cfg.n_head
        self.scale = 1.0 / math.sqrt(self.head_size)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (B, T, C); keep (B, 1, 1, T) bool, False on padding keys."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, self.head_size).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, T)
        # A finite minimum, not -inf: exp() underflows to exactly 0 for padding keys, and a row with
        # no real key (never fed in practice) stays finite instead of NaN.
        att = att.masked_fill(~keep, torch.finfo(att.dtype).min)
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, self.n_embd)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm encoder block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, cfg.ffn_mult * cfg.n_embd),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), keep)
        return x + self.mlp(self.ln_2(x))


class TextClassifier(nn.Module):
    """Token + learned position embeddings, `n_layer` blocks, masked mean pooling, linear head."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_length, cfg.n_embd)
        self.drop = nn.Dropout(cfg.embd_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])

    def token_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: int64 (B, T) -> final-layer token states (B, T, n_embd)."""
        t = input_ids.size(1)
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))  # (B, T, C)
        keep = (attention_mask > 0)[:, None, None, :]  # (B, T) -> (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, keep)
        return self.ln_f(x)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: int64 (B, T), 1 on tokens, 0 on padding -> logits (B, n_classes)."""
        x = self.token_states(input_ids, attention_mask)
        weights = (attention_mask > 0).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, T, C) -> (B, C)
        return self.head(pooled)


class MaskedTokens(nn.Module):
    """A classifier's encoder with an output layer tied to its token embeddings: predicts masked tokens.

    For pretraining on the task's own texts before the classifier is trained; only `net` is kept.
    """

    def __init__(self, net: TextClassifier) -> None:
        super().__init__()
        self.net = net
        self.bias = nn.Parameter(torch.zeros(net.cfg.vocab_size))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, where: Tensor) -> Tensor:
        """Vocabulary logits (M, vocab_size) at the M positions where `where` (B, T) is True."""
        states = self.net.token_states(input_ids, attention_mask)[where]  # (B, T, C) -> (M, C)
        return states @ self.net.tok_emb.weight.T + self.bias  # (M, C) -> (M, V)
