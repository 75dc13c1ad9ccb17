"""A conditional DCGAN for 28x28 digits: a generator (noise + class -> image) and its critic.

Generator: noise z and a learned class embedding -> linear -> 7x7 feature map -> two transposed
convolutions with batch norm (7 -> 14 -> 28) -> tanh, mapped to [0, 1] inside the graph so the exported
ONNX emits pixel intensities. Discriminator: two strided convolutions with spectral norm and a
projection head (Miyato & Koyama 2018): score = w.h + embed(class).h, which conditions on the class
without concatenating one-hot planes, plus an auxiliary classifier head (AC-GAN, Odena et al. 2017) that
the generator must also satisfy. Trained with the hinge loss (models/recipes/gan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(slots=True)
class GanConfig:
    noise_dim: int = 32
    classes: int = 10
    embed_dim: int = 16
    """Size of the generator's class embedding."""
    g_width: int = 64
    """Generator channels at 14x14 (twice this at 7x7)."""
    d_width: int = 32
    """Discriminator channels at 14x14 (twice this at 7x7)."""


class Generator(nn.Module):
    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.g_width
        self.embed = nn.Embedding(cfg.classes, cfg.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(cfg.noise_dim + cfg.embed_dim, 2 * w * 7 * 7, bias=False),
            nn.BatchNorm1d(2 * w * 7 * 7),
            nn.ReLU(),
        )
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, stride=2, padding=1), nn.Tanh(),  # 14 -> 28
        )

    def forward(self, z: Tensor, label: Tensor) -> Tensor:
        h = torch.cat([z, self.embed(label)], dim=1)  # (B, d) + (B, e) -> (B, d + e)
        h = self.project(h).view(-1, 2 * self.cfg.g_width, 7, 7)  # -> (B, 2w, 7, 7)
        return (self.body(h) + 1.0) * 0.5  # (B, 1, 28, 28) in [0, 1]


class Discriminator(nn.Module):
    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        w = cfg.d_width
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(1, w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 28 -> 14
            spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 14 -> 7
            nn.Flatten(),
            spectral_norm(nn.Linear(2 * w * 7 * 7, 4 * w)), nn.LeakyReLU(0.2),
        )
        self.head = spectral_norm(nn.Linear(4 * w, 1))
        self.embed = spectral_norm(nn.Embedding(cfg.classes, 4 * w))
        self.classify = nn.Linear(4 * w, cfg.classes)

    def forward(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """image in [0, 1] (B, 1, 28, 28) -> (realness score (B,), class logits (B, classes))."""
        h = self.body(image * 2.0 - 1.0)  # (B, 1, 28, 28) -> (B, 4w)
        return self.head(h).squeeze(1) + (self.embed(label) * h).sum(dim=1), self.classify(h)
