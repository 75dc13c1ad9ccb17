"""A small convolutional autoencoder for 28x28 images: image in, reconstruction of the same shape out.

Two strided convolutions (28 -> 14 -> 7), a narrow linear bottleneck, and the mirror image with
transposed convolutions; a sigmoid keeps the reconstruction in [0, 1] like the input. The bottleneck
is what makes it an anomaly detector: it can only rebuild what resembles its training data, so the
reconstruction error of anything else is large.

With `bias=False` every layer before the sigmoid is linear or ReLU without an offset, so the net is
positively homogeneous: an empty (all-zero) image has the zero code and decodes to uniform 0.5 grey.
A net with biases learns to rebuild an empty page almost perfectly (its background is what it draws
best), so an empty page would pass for a digit.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(slots=True)
class AutoencoderConfig:
    in_channels: int = 1
    widths: tuple[int, int] = (16, 32)
    """Channels after the first and second strided convolution."""
    latent: int = 16
    """Size of the bottleneck code."""
    bias: bool = True
    """Bias terms in the layers; without them the net before the sigmoid is positively homogeneous."""


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.widths
        b = cfg.bias
        self.encoder = nn.Sequential(
            nn.Conv2d(cfg.in_channels, c1, 3, stride=2, padding=1, bias=b), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=b), nn.ReLU(),  # 14 -> 7
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, cfg.latent, bias=b),
        )
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent, c2 * 7 * 7, bias=b), nn.ReLU(),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1, bias=b), nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(c1, cfg.in_channels, 4, stride=2, padding=1, bias=b),  # 14 -> 28
            nn.Sigmoid(),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.decoder(self.encoder(image))  # (B, 1, 28, 28) -> (B, latent) -> (B, 1, 28, 28)
