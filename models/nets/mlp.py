"""The textbook feedforward classifier: flatten, 784 -> 128 -> 10 with a ReLU between."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(slots=True)
class MlpConfig:
    in_features: int = 28 * 28
    hidden: int = 128
    classes: int = 10
    dropout: float = 0.1
    """Dropout on the hidden layer while training (a no-op in the exported eval graph)."""


class Mlp(nn.Module):
    def __init__(self, cfg: MlpConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden = nn.Linear(cfg.in_features, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.classes)

    def forward(self, image: Tensor) -> Tensor:
        x = image.flatten(1)  # (B, 1, 28, 28) -> (B, 784)
        return self.out(self.drop(self.hidden(x).relu()))  # (B, 784) -> (B, 128) -> (B, classes)
