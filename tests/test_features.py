"""The in-graph log-mel front end against a NumPy reference (rfft per frame) and torch.stft, in torch
and exported to ONNX (the graph the server runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

torch = pytest.importorskip("torch")

from models.nets.features import FeatureConfig, LogMel, mel_filterbank  # noqa: E402


def reference_log_mel(audio: npt.NDArray[np.float64], cfg: FeatureConfig) -> npt.NDArray[np.float64]:
    """Centered frames with zero padding, periodic Hann, |rfft|^2, mel filterbank, log(+eps)."""
    pad = cfg.n_fft // 2
    x = np.concatenate([np.zeros(pad), audio, np.zeros(pad)])
    n_frames = len(audio) // cfg.hop + 1
    window = np.hanning(cfg.n_fft + 1)[:-1]  # periodic Hann
    frames = np.stack([x[t * cfg.hop : t * cfg.hop + cfg.n_fft] * window for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, n_fft // 2 + 1)
    return np.log(power @ mel_filterbank(cfg).astype(np.float64) + cfg.eps)


@pytest.mark.parametrize("samples", [400, 8000, 16037])
def test_log_mel_matches_numpy_reference(samples: int) -> None:
    cfg = FeatureConfig()
    rng = np.random.default_rng(samples)
    t = np.arange(samples) / cfg.sample_rate
    audio = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(samples)
    got = LogMel(cfg)(torch.tensor(audio, dtype=torch.float32)[None])[0].numpy()
    want = reference_log_mel(audio, cfg)
    assert got.shape == want.shape == (samples // cfg.hop + 1, cfg.n_mels)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)


@pytest.mark.filterwarnings("ignore:Constant folding:UserWarning")  # the tracer's note on chunk's Slice
def test_exported_log_mel_matches_numpy_reference(tmp_path: Path) -> None:
    """STFT + filterbank inside the ONNX graph: any length, batch of ragged zero-padded items."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from models.export import export_onnx

    cfg = FeatureConfig()
    path = tmp_path / "log_mel.onnx"
    export_onnx(LogMel(cfg), (torch.zeros(1, 3200),), path, input_names=["audio"], output_names=["log_mel"],
                dynamic_axes={"audio": {0: "batch", 1: "samples"}, "log_mel": {0: "batch", 1: "frames"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    items = [0.2 * rng.standard_normal(n) for n in (16037, 5120)]
    batch = np.zeros((2, 16037), np.float32)  # (B, longest), zero padded as the server pads
    for i, item in enumerate(items):
        batch[i, : len(item)] = item
    (got,) = session.run(None, {"audio": batch})
    assert got.shape == (2, 16037 // cfg.hop + 1, cfg.n_mels)
    for i, item in enumerate(items):
        want = reference_log_mel(item.astype(np.float32).astype(np.float64), cfg)
        np.testing.assert_allclose(got[i, : len(want)], want, atol=2e-3, rtol=0)


def test_log_mel_power_matches_torch_stft() -> None:
    cfg = FeatureConfig(eps=1e-10)
    audio = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    spec = torch.stft(audio, cfg.n_fft, hop_length=cfg.hop, window=torch.hann_window(cfg.n_fft), center=True,
                      pad_mode="constant", return_complex=True)  # (B, bins, frames)
    mel = (spec.abs() ** 2).transpose(1, 2) @ torch.from_numpy(mel_filterbank(cfg))
    torch.testing.assert_close(LogMel(cfg)(audio), torch.log(mel + cfg.eps), atol=1e-3, rtol=1e-4)


def test_mel_filterbank_triangles() -> None:
    cfg = FeatureConfig()
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_fft // 2 + 1, cfg.n_mels)
    assert (fb >= 0).all() and (fb <= 1).all()
    assert (fb.max(axis=0) > 0.3).all(), "every mel band covers at least one FFT bin"
    peaks = fb.argmax(axis=0)
    assert (np.diff(peaks) >= 0).all(), "band centres rise with frequency"


def test_tone_lights_up_its_band() -> None:
    """The loudest band is the one whose centre is nearest the tone on the HTK mel scale, worked out
    here from the formula rather than from mel_filterbank (which LogMel itself uses)."""
    cfg = FeatureConfig()

    def mel(hz: float) -> float:
        return 2595.0 * float(np.log10(1.0 + hz / 700.0))

    centres = np.linspace(mel(cfg.f_min), mel(cfg.f_max), cfg.n_mels + 2)[1:-1]  # evenly spaced in mel
    t = np.arange(cfg.sample_rate) / cfg.sample_rate
    for hz in (300.0, 1000.0, 4000.0):
        feats = LogMel(cfg)(torch.tensor(np.sin(2 * np.pi * hz * t), dtype=torch.float32)[None])[0]
        band = int(feats[10:-10].mean(dim=0).argmax())
        assert band == int(np.abs(centres - mel(hz)).argmin()), hz
