"""The speech family: synthesis, CTC decoding, padding invariance of the exported graph, a quick build.

Real espeak-ng/flite, real torch, real ONNX Runtime. Tests that synthesise skip when the TTS binaries
are missing (`apt-get install -y espeak-ng flite`).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from models.data.speech import (  # noqa: E402
    SAMPLE_RATE,
    VOCABULARY,
    Request,
    SpeechData,
    Voice,
    augment,
    encode,
    espeak_voices,
    make_speech_data,
    normalize_transcript,
    synthesize,
)
from models.nets.speech import SpeechConfig, SpeechNet, greedy_decode, reverse_within  # noqa: E402
from models.recipes.base import BuildOptions, FamilyResult  # noqa: E402
from models.recipes.speech import NET, RECIPES, export, pad_audio  # noqa: E402
from service.repository.config import SpeechRecognitionTask, load_config  # noqa: E402

FRAME_SHIFT_S = NET.frame_shift_s

needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="espeak-ng and flite are not installed (apt-get install -y espeak-ng flite)",
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the CI machine has 2 shared cores


# ---- data ----------------------------------------------------------------------------------------


def test_transcripts_use_the_vocabulary() -> None:
    assert VOCABULARY[0] == "<blank>" and len(VOCABULARY) == 29
    assert normalize_transcript("  Turn ON the light! ") == "turn on the light"
    assert encode("it's") == [VOCABULARY.index(c) for c in "it's"]


def test_held_out_voices_are_never_trained_on() -> None:
    train, held = espeak_voices()
    assert train and held and not set(train) & set(held)
    assert {v.name for v in held} - {v.name for v in train}, "a whole accent is held out"


def test_augment_pads_adds_noise_and_scales() -> None:
    tone = np.cos(2 * np.pi * 300 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(tone, rng)
        assert out.dtype == np.float32 and SAMPLE_RATE <= len(out) < SAMPLE_RATE + 0.5 * SAMPLE_RATE
        assert 0.1 <= np.abs(out).max() <= 0.9 + 1e-6
        assert np.abs(out[:100]).max() > 0, "noise fills the leading silence"


@needs_tts
@pytest.mark.parametrize("voice", [Voice("espeak-ng", "en-us", "f3"), Voice("flite", "slt")])
def test_synthesis_is_deterministic_cached_and_scales_with_text(tmp_path: Path, voice: Voice) -> None:
    short, long = Request("stop", voice), Request("three one four one five nine", voice)
    first = synthesize(short, cache_dir=tmp_path)
    cached = list(tmp_path.rglob("*.npy"))
    assert len(cached) == 1
    cached[0].unlink()  # synthesise again from scratch: the TTS itself must be deterministic
    again = synthesize(short, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.ndim == 1 and 0.01 < np.abs(first).max() <= 1.0
    longer = synthesize(long, cache_dir=tmp_path)
    assert 0.2 * SAMPLE_RATE < len(first) < 1.5 * SAMPLE_RATE
    assert len(longer) > 2 * len(first), "six words take longer to say than one"


@needs_tts
def test_data_set_is_seeded_and_labelled(tmp_path: Path) -> None:
    def make(seed: int) -> SpeechData:
        return make_speech_data(seed=seed, n_train=12, n_test=4, n_flite_test=2, cache_dir=tmp_path)

    a, b, c = make(0), make(0), make(1)
    assert a.train.transcripts == b.train.transcripts != c.train.transcripts
    for x, y in zip(a.train.audio, b.train.audio, strict=True):
        np.testing.assert_array_equal(x, y)
    assert set(a.test.voices) <= set(a.test_voices) and not set(a.test_voices) & set(a.train_voices)
    assert all(v.startswith("flite:") for v in a.test_flite.voices)
    assert set(a.test_flite.voices) <= set(a.flite_voices) and not set(a.flite_voices) & set(a.train_voices)
    assert set(a.train.voices) <= set(a.train_voices)
    for part in (a.train, a.test, a.test_flite):
        for text, audio, req in zip(part.transcripts, part.audio, part.requests, strict=True):
            assert text == normalize_transcript(req.text) != ""
            # the noisy item holds the clean synthesis of exactly this text (after silence, under noise)
            clean = synthesize(req, cache_dir=tmp_path).astype(np.float64)
            n = len(audio) + len(clean)
            xcorr = np.fft.irfft(np.fft.rfft(audio, n) * np.conj(np.fft.rfft(clean, n)), n)
            assert xcorr.max() / (np.linalg.norm(audio) * np.linalg.norm(clean)) > 0.8


# ---- net -----------------------------------------------------------------------------------------


def test_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    idx = {c: i for i, c in enumerate(VOCABULARY)}
    path = [0, idx["g"], idx["g"], 0, idx["o"], idx[" "], idx["o"], 0, idx["o"], idx["n"], 0, idx["x"]]
    log_probs = np.log(np.eye(len(VOCABULARY), dtype=np.float32)[path] + 1e-6)[None]
    assert greedy_decode(log_probs, np.array([len(path) - 1]), VOCABULARY) == ["go oon"]


def test_reverse_within_keeps_padding_in_place() -> None:
    x = torch.arange(10.0).reshape(2, 5, 1)
    got = reverse_within(x, torch.tensor([5, 3]))[..., 0]
    assert got.tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


def test_exported_graph_is_padding_invariant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SpeechNet(SpeechConfig(channels=32, hidden=24)).eval()
    rng = np.random.default_rng(0)
    items = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 5300, 9871, 161)]
    path = tmp_path / "speech.onnx"
    export(net, path, pad_audio(items[:2]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    audio, lengths = pad_audio(items)
    padded = audio.numpy().copy()
    padded[lengths.numpy()[:, None] <= np.arange(padded.shape[1])] = 0.7  # garbage padding must not matter
    batch_lp, batch_fl = session.run(None, {"audio": padded, "audio_lengths": lengths.numpy()})
    for i, item in enumerate(items):
        one_lp, one_fl = session.run(None, {"audio": item[None], "audio_lengths": np.array([len(item)])})
        assert batch_fl[i] == one_fl[0] == int(net.frame_lengths(torch.tensor([len(item)]))[0])
        np.testing.assert_allclose(batch_lp[i, : one_fl[0]], one_lp[0], atol=1e-4, rtol=0)


# ---- the family build ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory: pytest.TempPathFactory) -> FamilyResult:
    """One `--quick` speech build shared by the tests below (about a minute on 2 cores)."""
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng and flite are not installed (apt-get install -y espeak-ng flite)")
    torch.set_num_threads(1)
    (recipe,) = [r for r in RECIPES if r.name == "speech"]
    return recipe.build(BuildOptions(out=tmp_path_factory.mktemp("repo"), quick=True, progress=False))


@pytest.mark.train
def test_quick_build_publishes_a_servable_model(quick_build: FamilyResult) -> None:
    result, repo = quick_build, quick_build.path.parent.parent
    assert result.path == repo / "speech" / "1"
    assert set(result.metrics) >= {"wer", "cer", "wer_flite"}
    cases = {"batch1_short", "batch1_long", "batch8_short", "batch8_long", "padded_vs_single"}
    assert cases <= set(result.parity)
    assert max(result.parity.values()) <= 1e-4
    model = onnx.load(str(result.path / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    config = load_config(repo / "speech" / "config.yaml")
    assert isinstance(config.task, SpeechRecognitionTask)
    assert config.task.vocabulary == VOCABULARY and config.task.frame_shift_s == pytest.approx(FRAME_SHIFT_S)
    assert [(t.name, t.pad_value) for t in config.inputs] == [("audio", 0.0), ("audio_lengths", None)]
    assert config.max_batch_size == 16 and config.labels == []
    assert config.provenance["metrics"]["wer"] == pytest.approx(result.metrics["wer"])
    assert config.provenance["data"]["held_out_voices"]
    session = ort.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
    log_probs, frames = session.run(None, {"audio": np.zeros((2, 8000), np.float32),
                                           "audio_lengths": np.array([8000, 4000])})
    # centered frames, subsampled
    expected = [(n // NET.features.hop) // NET.stride + 1 for n in (8000, 4000)]
    assert log_probs.shape == (2, expected[0], len(VOCABULARY)) and frames.tolist() == expected


@pytest.mark.train
async def test_quick_build_is_served_by_the_audio_pipeline(quick_build: FamilyResult) -> None:
    """WAVs through /v1/models/speech/predict decode to what the exported graph + greedy CTC say."""
    from conftest import serve_app

    voice = Voice("espeak-ng", "en-us")
    clips = [synthesize(Request(text, voice)) for text in ("turn on the light", "three one four")]
    wavs = []
    for clip in clips:
        buffer = io.BytesIO()
        soundfile.write(buffer, clip, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        wavs.append(buffer.getvalue())
    waves = [soundfile.read(io.BytesIO(w), dtype="float32")[0] for w in wavs]  # what the server decodes
    session = ort.InferenceSession(str(quick_build.path / "model.onnx"), providers=["CPUExecutionProvider"])
    want = []
    for wave in waves:
        log_probs, frames = session.run(None, {"audio": wave[None], "audio_lengths": np.array([len(wave)])})
        want += greedy_decode(log_probs, frames, VOCABULARY)
    async with serve_app(quick_build.path.parent.parent) as client:
        files = [("file", (f"{i}.wav", w, "audio/wav")) for i, w in enumerate(wavs)]
        response = await client.post("/v1/models/speech/predict?return_timestamps=true", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "speech-recognition"
    assert [p["text"] for p in body["predictions"]] == want
    for prediction, wave in zip(body["predictions"], waves, strict=True):
        assert prediction["duration_s"] == pytest.approx(len(wave) / SAMPLE_RATE, abs=1e-3)
        assert all(c["end_s"] <= len(wave) / SAMPLE_RATE + 2 * FRAME_SHIFT_S for c in prediction["chars"])
