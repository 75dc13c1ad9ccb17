"""The two benchmark networks, in plain torch, exported with a dynamic batch axis.

`small`: a LeNet-sized CNN on 1x28x28 (about 1 M multiply-adds per item).
`resnet18`: ResNet-18 (He et al. 2015) on 3x224x224, 1000 classes (about 1.8 G multiply-adds per item).
Weights are random: the benchmark measures serving speed, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B, 16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 7, 7)
        )
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (B, 1568) -> (B, 10)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )  # (B, 64, 56, 56)
        widths, layers, cin = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            cin = width
        self.layers = nn.Sequential(*layers)  # (B, 512, 7, 7)
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)).mean(dim=(2, 3)))  # (B, 512) -> (B, classes)


def export(net: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    torch.manual_seed(0)
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, *shape)
    torch.onnx.export(
        net, (example,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )


def build(repo: Path) -> None:
    """Write small, small_nobatch, resnet18 and resnet18_nobatch into `repo` (skips those present)."""
    torch.manual_seed(0)
    specs = {"small": (SmallCnn, (1, 28, 28), 64), "resnet18": (ResNet18, (3, 224, 224), 16)}
    for name, (cls, shape, max_batch) in specs.items():
        for suffix, batch in (("", max_batch), ("_nobatch", 0)):
            folder = repo / f"{name}{suffix}"
            onnx_file = folder / "1" / "model.onnx"
            if not onnx_file.exists():
                export(cls(), shape, onnx_file)
            (folder / "config.yaml").write_text(
                f"max_batch_size: {batch}\nmax_queue_delay_ms: 2\nmax_queue_size: 1024\n"
            )
