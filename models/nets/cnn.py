"""A small residual image classifier (ResNet-style basic blocks with batch norm) for 28x28 inputs.

A 3x3 stem, then one strided residual stage per entry of `channels` (28 -> 14 -> 7 -> 4 with the
defaults), global average pooling and a linear head. About 8 M multiply-adds per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(slots=True)
class CnnConfig:
    in_channels: int = 1
    stem: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    """Output channels of each residual stage; each stage halves the resolution."""
    blocks: int = 1
    """Residual blocks per stage (the first one strided)."""
    classes: int = 10
    dropout: float = 0.2


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected when the shape changes) shortcut, then relu."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn1(self.conv1(x)).relu()
        h = self.bn2(self.conv2(h))
        return (h + self.shortcut(x)).relu()


class Cnn(nn.Module):
    def __init__(self, cfg: CnnConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.stem),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        c_in = cfg.stem
        for c_out in cfg.channels:
            for i in range(cfg.blocks):
                layers.append(ResidualBlock(c_in, c_out, stride=2 if i == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(c_in, cfg.classes)

    def forward(self, image: Tensor) -> Tensor:
        h = self.stages(self.stem(image))  # (B, 1, 28, 28) -> (B, C, 4, 4)
        h = h.mean(dim=(2, 3))  # (B, C, 4, 4) -> (B, C)
        return self.head(self.drop(h))  # (B, C) -> (B, classes)
