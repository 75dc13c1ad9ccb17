"""CTC speech recogniser: log-mel -> conv subsampling (2x) -> bidirectional GRU -> characters.

Padding never changes an item's answer within its valid frames, so the server may batch ragged
audio: samples past `audio_lengths` are zeroed, features are normalised over valid frames only and
re-masked after every layer, and the backward GRU runs over each item reversed *within its own length*
(a gather), so it starts at the item's real end rather than at the batch's padded end. Packed
sequences would do the same but do not export to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from models.nets.features import FeatureConfig, LogMel


@dataclass(frozen=True, slots=True)
class SpeechConfig:
    vocab_size: int = 29
    """CTC symbols including the blank (index 0)."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    channels: int = 192
    """Width of the conv subsampling front end."""
    hidden: int = 160
    """GRU units per direction."""
    stride: int = 2
    """Time subsampling of the first conv (output frames per feature frame)."""
    layers: int = 2
    dropout: float = 0.15
    spec_augment: bool = True
    """Random time and frequency masks on the features while training."""

    @property
    def frame_shift_s(self) -> float:
        return self.stride * self.features.hop / self.features.sample_rate


def _lengths_mask(lengths: Tensor, size: int | Tensor, like: Tensor) -> Tensor:
    """(B,) lengths -> (B, size, 1) float mask, 1 on valid steps."""
    steps = torch.arange(size, device=lengths.device)  # (T,)
    return (steps[None, :] < lengths[:, None]).to(like.dtype)[:, :, None]


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each item's first lengths[b] steps of (B, T, C); padded steps stay in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, T)
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


class BiGRULayer(nn.Module):
    """One bidirectional GRU layer whose backward pass starts at each item's own end."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.forward_gru = nn.GRU(inputs, hidden, batch_first=True)
        self.backward_gru = nn.GRU(inputs, hidden, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        ahead, _ = self.forward_gru(x)  # causal: padding after an item cannot reach its valid steps
        behind, _ = self.backward_gru(reverse_within(x, lengths))
        return torch.cat([ahead, reverse_within(behind, lengths)], dim=2)  # (B, T, 2 H)


class SpeechNet(nn.Module):
    """(audio (B, S) float32, audio_lengths (B,) int64) -> (log_probs (B, T, V), frame_lengths (B,))."""

    def __init__(self, cfg: SpeechConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SpeechConfig()
        c = self.cfg
        self.features = LogMel(c.features)
        s = c.stride
        self.conv1 = nn.Conv1d(c.features.n_mels, c.channels, kernel_size=2 * s + 1, stride=s, padding=s)
        self.conv2 = nn.Conv1d(c.channels, c.channels, kernel_size=3, padding=1)
        self.rnn = nn.ModuleList(
            [BiGRULayer(c.channels if i == 0 else 2 * c.hidden, c.hidden) for i in range(c.layers)]
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(2 * c.hidden, c.vocab_size)

    def frame_lengths(self, audio_lengths: Tensor) -> Tensor:
        frames = self.cfg.features.num_frames(audio_lengths)
        # conv1: kernel 2s + 1, padding s, stride s
        return torch.div(frames - 1, self.cfg.stride, rounding_mode="floor") + 1

    def forward(self, audio: Tensor, audio_lengths: Tensor) -> tuple[Tensor, Tensor]:
        audio = audio * _lengths_mask(audio_lengths, audio.shape[1], audio)[:, :, 0]
        feats = self.features(audio)  # (B, F, n_mels)
        mask = _lengths_mask(self.cfg.features.num_frames(audio_lengths), feats.shape[1], feats)  # (B, F, 1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, 1)
        mean = (feats * mask).sum(dim=1, keepdim=True) / count
        var = (((feats - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
        x = (feats - mean) / torch.sqrt(var + 1e-3) * mask
        if self.training and self.cfg.spec_augment:
            x = spec_augment(x)
        out_lengths = self.frame_lengths(audio_lengths)
        x = torch.relu(self.conv1(x.transpose(1, 2)))  # (B, n_mels, F) -> (B, C, T)
        mask = _lengths_mask(out_lengths, x.shape[2], x)  # (B, T, 1)
        x = x * mask.transpose(1, 2)
        x = torch.relu(self.conv2(x)).transpose(1, 2) * mask  # (B, C, T) -> (B, T, C)
        for layer in self.rnn:
            x = layer(self.drop(x), out_lengths) * mask
        return torch.log_softmax(self.head(self.drop(x)), dim=-1), out_lengths


def spec_augment(x: Tensor, *, freq_width: int = 8, time_width: int = 10, time_masks: int = 2) -> Tensor:
    """Zero one random band of mel bins and a few random time spans per item of (B, F, M)."""
    b, frames, mels = x.shape
    bins = torch.arange(mels, device=x.device)[None, None, :]
    f0 = torch.randint(0, mels, (b, 1, 1), device=x.device)
    fw = torch.randint(0, freq_width + 1, (b, 1, 1), device=x.device)
    keep = ~((bins >= f0) & (bins < f0 + fw))
    steps = torch.arange(frames, device=x.device)[None, :, None]
    for _ in range(time_masks):
        t0 = torch.randint(0, max(frames, 1), (b, 1, 1), device=x.device)
        tw = torch.randint(0, time_width + 1, (b, 1, 1), device=x.device)
        keep = keep & ~((steps >= t0) & (steps < t0 + tw))
    return x * keep.to(x.dtype)


def greedy_decode(
    log_probs: npt.NDArray[np.float32],
    lengths: npt.NDArray[np.int64],
    vocabulary: list[str],
    *,
    blank: int = 0,
) -> list[str]:
    """Best path per item of (B, T, V): argmax, collapse repeats, drop blanks."""
    texts = []
    for row, n in zip(log_probs.argmax(axis=-1), lengths, strict=True):
        path = row[: int(n)]
        keep = np.ones(len(path), dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        texts.append("".join(vocabulary[i] for i in path[keep] if i != blank))
    return [" ".join(t.split()) for t in texts]
