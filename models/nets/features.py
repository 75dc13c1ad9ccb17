"""Log-mel spectrogram in torch, built from plain ops so it exports inside the ONNX graph.

The STFT is a strided conv1d with a fixed windowed DFT basis (cos and sin rows), so the graph holds
only Pad, Conv, Mul, Add, MatMul and Log: clients send raw 16 kHz waveforms. Framing is "centered"
with *zero* padding (not torch.stft's reflect): a frame near the end of an item then sees zeros,
exactly what it sees when the item is zero-padded inside a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    """Window and DFT length in samples (25 ms at 16 kHz)."""
    hop: int = 160
    """Samples between frames (10 ms at 16 kHz)."""
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 7600.0
    eps: float = 1e-6
    """Added to mel energies before the log."""

    def num_frames(self, samples: Tensor) -> Tensor:
        """Frames produced for `samples` valid samples (centered framing)."""
        return torch.div(samples, self.hop, rounding_mode="floor") + 1


def hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(cfg: FeatureConfig) -> npt.NDArray[np.float32]:
    """HTK-style triangular filters, shape (n_fft // 2 + 1, n_mels)."""
    bins = np.fft.rfftfreq(cfg.n_fft, d=1.0 / cfg.sample_rate)
    edges = mel_to_hz(
        np.linspace(hz_to_mel(np.array(cfg.f_min)), hz_to_mel(np.array(cfg.f_max)), cfg.n_mels + 2)
    )
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (bins[None, :] - lower) / (center - lower)
    falling = (upper - bins[None, :]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_bins)
    return weights.T.astype(np.float32)


def hann(n: int) -> npt.NDArray[np.float64]:
    """Periodic Hann window (as torch.hann_window(n))."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


class LogMel(nn.Module):
    """(B, samples) waveform -> (B, frames, n_mels) log-mel energies."""

    def __init__(self, cfg: FeatureConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FeatureConfig()
        n_fft, n_bins = self.cfg.n_fft, self.cfg.n_fft // 2 + 1
        angle = 2 * np.pi * np.outer(np.arange(n_bins), np.arange(n_fft)) / n_fft  # (n_bins, n_fft)
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * hann(n_fft)  # (2 n_bins, n_fft)
        self.register_buffer(
            "basis", torch.from_numpy(basis.astype(np.float32))[:, None, :], persistent=False
        )
        self.register_buffer("fbank", torch.from_numpy(mel_filterbank(self.cfg)), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        pad = self.cfg.n_fft // 2
        x = nn.functional.pad(audio[:, None, :], (pad, pad))  # (B, S) -> (B, 1, S + n_fft)
        spec = nn.functional.conv1d(x, self.basis, stride=self.cfg.hop)  # (B, 2 n_bins, frames)
        real, imag = spec.chunk(2, dim=1)
        power = (real * real + imag * imag).transpose(1, 2)  # (B, frames, n_bins)
        return torch.log(power @ self.fbank + self.cfg.eps)  # (B, frames, n_mels)
