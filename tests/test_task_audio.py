"""Audio decoding and CTC decoding for the /v1 audio tasks: formats, refusals, timestamps, properties."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.tasks.audio import MAX_CHANNELS, ctc_greedy, decode_audio

RATE = 16000


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def codec(fmt: str, subtype: str) -> object:
    """A (format, subtype) case, skipped where this libsndfile build cannot write (so cannot read) it."""
    missing = fmt not in soundfile.available_formats() or subtype not in soundfile.available_subtypes(fmt)
    return pytest.param(fmt, subtype, id=f"{fmt}-{subtype}",
                        marks=pytest.mark.skipif(missing, reason=f"libsndfile without {fmt} {subtype}"))


@pytest.mark.parametrize(("fmt", "subtype"), [
    codec("WAV", "PCM_U8"), codec("WAV", "PCM_16"), codec("WAV", "PCM_24"), codec("WAV", "PCM_32"),
    codec("WAV", "FLOAT"), codec("WAV", "DOUBLE"), codec("FLAC", "PCM_16"), codec("FLAC", "PCM_24"),
    codec("OGG", "VORBIS"), codec("OGG", "OPUS"), codec("MP3", "MPEG_LAYER_III"),
])
def test_every_accepted_encoding_decodes_to_float32_mono(fmt: str, subtype: str) -> None:
    rate = 48000 if subtype == "OPUS" else RATE  # Opus works at 48 kHz: also exercises resampling
    decoded = decode_audio(encode(tone(0.5, rate), rate, fmt, subtype), sample_rate=RATE, max_duration_s=5)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert abs(decoded.samples.shape[0] - RATE // 2) <= 1
    assert 0.4 < np.abs(decoded.samples).max() <= 0.55
    assert decoded.duration_s == pytest.approx(0.5, abs=1e-3)
    assert decoded.notes == ([] if rate == RATE else ["resampled from 48000 Hz to 16000 Hz"])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_other_rates_are_resampled_and_noted(rate: int) -> None:
    decoded = decode_audio(encode(tone(1.0, rate), rate), sample_rate=RATE, max_duration_s=5)
    assert abs(decoded.samples.shape[0] - RATE) <= 2
    assert decoded.source_rate == rate and any(f"from {rate} Hz" in n for n in decoded.notes)
    spectrum = np.abs(np.fft.rfft(decoded.samples))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2  # still a 440 Hz tone (1 s -> 1 Hz bins)


@pytest.mark.parametrize("channels", [1, MAX_CHANNELS])
def test_channels_are_down_mixed_by_averaging(channels: int) -> None:
    samples = np.zeros((RATE, channels), dtype=np.float32)
    samples[:, 0] = 0.8
    decoded = decode_audio(encode(samples, RATE, subtype="FLOAT"), sample_rate=RATE, max_duration_s=5)
    np.testing.assert_allclose(decoded.samples, 0.8 / channels, rtol=1e-6)
    assert any(f"{channels} channels down-mixed" in n for n in decoded.notes) == (channels > 1)


def test_short_clips_are_padded_and_loud_float_samples_clipped() -> None:
    decoded = decode_audio(encode(np.full(80, 3.0, dtype=np.float32), RATE, subtype="FLOAT"),
                           sample_rate=RATE, max_duration_s=5)
    assert decoded.samples.shape == (1600,) and decoded.samples.max() == 1.0
    assert any("clipped" in n for n in decoded.notes) and any("padded" in n for n in decoded.notes)


def wav_header_only(rate: int, channels: int = 1) -> bytes:
    """A valid WAV with a tiny PCM-16 body and the given header fields."""
    body = b"\x00\x00" * channels * 4
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + \
        b"data" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidInput, "empty"),
        (b"this is plainly text, not a recording", InvalidInput, "not readable"),
        (encode(np.zeros(0, dtype=np.float32), RATE), InvalidInput, "no samples"),
        (encode(tone(3.0, RATE), RATE), InvalidInput, "longer than.*2 s"),
        (wav_header_only(7), InvalidInput, "7 Hz"),
        (wav_header_only(1_000_000), InvalidInput, "1000000 Hz"),
        (encode(np.zeros((100, 3), dtype=np.float32), RATE), InvalidInput, "3 channels; send mono or stereo"),
        (encode(np.zeros((100, 8), dtype=np.float32), RATE), InvalidInput, "8 channels; send mono or stereo"),
        (encode(np.array([0.1, np.nan, 0.2], dtype=np.float32), RATE, subtype="FLOAT"), InvalidInput, "NaN"),
        (encode(np.array([0.1, np.inf], dtype=np.float32), RATE, subtype="FLOAT"), InvalidInput, "infinite"),
        (encode(tone(0.2, RATE), RATE, "AIFF"), UnsupportedMediaType, "AIFF"),
        (encode(tone(1.0, RATE), RATE)[:30], InvalidInput, "recording 0"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, InvalidInput, "is a PNG image, not a recording"),
    ],
    ids=[
        "empty", "text", "zero-length", "too-long", "7hz", "1mhz", "3-channels", "8-channels", "nan", "inf",
        "aiff", "cut", "png",
    ],
)
def test_bad_recordings_are_refused_naming_the_problem(
    data: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        decode_audio(data, sample_rate=RATE, max_duration_s=2)


# ---- CTC ----------------------------------------------------------------------------------------------

VOCAB = ["_", "|", "a", "b", "c"]


def frames_for(path: list[int], *, confidence: float = 0.9) -> np.ndarray:
    """Log-probs (T, V) whose argmax follows `path`."""
    probs = np.full((len(path), len(VOCAB)), (1 - confidence) / (len(VOCAB) - 1))
    probs[np.arange(len(path)), path] = confidence
    return np.log(probs).astype(np.float32)


def test_greedy_ctc_collapses_repeats_drops_blanks_and_splits_words() -> None:
    path = [0, 2, 2, 0, 2, 3, 1, 1, 4, 0, 0]  # a a _ a b | | c -> "aab c"
    result = ctc_greedy(frames_for(path), vocabulary=VOCAB, blank=0, frame_shift_s=0.02)
    assert result.text == "aab c"
    assert [(w.text, w.start_s, w.end_s) for w in result.words] == [
        ("aab", pytest.approx(0.02), pytest.approx(0.12)), ("c", pytest.approx(0.16), pytest.approx(0.18))
    ]
    assert [c.text for c in result.chars] == ["a", "a", "b", "|", "c"]
    assert result.confidence == pytest.approx(0.9)


def test_ctc_on_logits_gives_the_same_text_and_a_probability() -> None:
    logits = frames_for([2, 0, 3]) * 7.0 + 3.0  # not normalised
    result = ctc_greedy(logits, vocabulary=VOCAB, blank=0, frame_shift_s=0.01)
    assert result.text == "ab" and 0.0 < result.confidence <= 1.0


def test_all_blank_and_empty_inputs_give_an_empty_transcript() -> None:
    assert ctc_greedy(frames_for([0, 0, 0]), vocabulary=VOCAB, blank=0, frame_shift_s=0.01).text == ""
    empty = ctc_greedy(
        np.zeros((0, len(VOCAB)), dtype=np.float32), vocabulary=VOCAB, blank=0, frame_shift_s=0.01
    )
    assert empty.text == "" and empty.confidence == 0.0


def test_sentencepiece_style_symbols_start_words() -> None:
    vocab = ["<b>", "\u2581he", "llo", "\u2581wor", "ld"]
    result = ctc_greedy(
        np.log(np.eye(5)[[1, 2, 0, 3, 4]] * 0.9 + 0.02), vocabulary=vocab, blank=0, frame_shift_s=0.01
    )
    assert result.text == "hello world"


# ---- properties ---------------------------------------------------------------------------------------

ALLOWED = (InvalidInput, UnsupportedMediaType, PayloadTooLarge)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_input_errors(data: bytes) -> None:
    try:
        decoded = decode_audio(data, sample_rate=RATE, max_duration_s=5)
    except ALLOWED:
        return
    assert decoded.samples.dtype == np.float32 and np.all(np.abs(decoded.samples) <= 1.0)


@PROPERTY
@given(st.binary(min_size=1, max_size=512), st.integers(0, 43))
def test_damaged_wav_files_raise_only_input_errors(noise: bytes, cut: int) -> None:
    data = encode(tone(0.05, RATE), RATE)
    try:
        decoded = decode_audio(data[:cut] + noise, sample_rate=RATE, max_duration_s=5)
    except ALLOWED:
        return
    assert decoded.samples.dtype == np.float32 and np.all(np.abs(decoded.samples) <= 1.0)


@PROPERTY
@given(
    rate=st.sampled_from([4000, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000]),
    channels=st.integers(1, MAX_CHANNELS),
    seconds=st.floats(0.001, 1.5),
    codec=st.sampled_from([("WAV", "PCM_16"), ("WAV", "PCM_U8"), ("WAV", "FLOAT"), ("FLAC", "PCM_24")]),
    seed=st.integers(0, 2**16),
)
def test_valid_recordings_decode_to_mono_float32_at_the_model_rate(
    rate: int, channels: int, seconds: float, codec: tuple[str, str], seed: int
) -> None:
    frames = max(1, int(seconds * rate))
    samples = np.random.default_rng(seed).uniform(-1, 1, size=(frames, channels)).astype(np.float32)
    decoded = decode_audio(encode(samples, rate, *codec), sample_rate=RATE, max_duration_s=2)
    expected = max(int(np.ceil(0.1 * RATE)), round(frames * RATE / rate))
    assert decoded.samples.ndim == 1 and decoded.samples.dtype == np.float32
    assert abs(decoded.samples.shape[0] - expected) <= 1
    assert np.all(np.isfinite(decoded.samples)) and np.abs(decoded.samples).max() <= 1.0


@PROPERTY
@given(st.lists(st.integers(0, len(VOCAB) - 1), max_size=60))
def test_ctc_text_is_the_collapsed_path(path: list[int]) -> None:
    result = ctc_greedy(frames_for(path), vocabulary=VOCAB, blank=0, frame_shift_s=0.01)
    collapsed = [s for i, s in enumerate(path) if s != 0 and (i == 0 or path[i - 1] != s)]
    expected = " ".join("".join(VOCAB[s] for s in collapsed).replace("|", " ").split())
    assert result.text == expected
    assert all(c.start_s < c.end_s for c in result.chars) and 0.0 <= result.confidence <= 1.0
