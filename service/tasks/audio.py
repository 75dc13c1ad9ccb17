"""Audio tasks: encoded recordings -> float32 mono at the model's rate; CTC log-probs -> transcript.

Decoding accepts WAV (PCM 8/16/24/32-bit, float), FLAC, OGG and MP3 through libsndfile, and what
browsers and phones record (WebM/Opus, Ogg/Opus, MP4/AAC, MP3) through PyAV (`service.tasks.containers`),
checks the header (rate, channels, duration) before reading samples, down-mixes stereo to mono by averaging
(more channels are refused, see MAX_CHANNELS), refuses NaN/Inf samples and resamples with soxr.
What was changed is said in `notes`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from service.errors import InvalidInput, UnsupportedMediaType
from service.tasks import containers, image
from service.tasks.labels import log_softmax
from service.types import FloatArray

FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "RF64": "WAV", "FLAC": "FLAC", "OGG": "OGG", "MP3": "MP3"}
"""libsndfile format names accepted -> the name used in messages."""
ACCEPTED = "WAV (PCM 8/16/24/32-bit or float), FLAC, OGG (Vorbis, Opus), MP3, WebM/Opus or MP4/AAC"
MIN_SAMPLE_RATE = 4_000
"""Lowest input rate resampled; below it there is no speech band left to recover."""
MAX_SAMPLE_RATE = 384_000
"""Highest input rate resampled (studio converters stop here)."""
MAX_CHANNELS = 2
"""Most channels down-mixed: mono and stereo are accepted. Surround and multi-microphone recordings
(up to 8 channels and beyond) are refused rather than guessed at: which channel holds the voice is
the sender's knowledge, not ours."""
MIN_DURATION_S = 0.1
"""Shorter recordings are padded with silence to this length so every model gets a few frames."""
MAX_SHORTFALL_S = containers.MAX_SHORTFALL_S
"""A file may hold this much less audio than its header states before it counts as truncated."""
PYAV_FIRST = ("WebM", "MP4", "MP3")
"""Containers decoded by PyAV rather than libsndfile: libsndfile reads no WebM or MP4, and skips a
damaged MP3 frame without a word where FFmpeg's decoder reports it. Ogg goes to libsndfile first (it
trims Vorbis to the exact length; the Ogg page checksums catch damage) and to PyAV when libsndfile
cannot read it (a build without Opus)."""
_WORD_DELIMITERS = ("|", "\u2581", " ")  # wav2vec2 "|", sentencepiece "▁", plain space


@dataclass(slots=True)
class DecodedAudio:
    """One recording as float32 mono samples at the model's rate, in [-1, 1]."""

    samples: FloatArray
    source_rate: int
    duration_s: float
    notes: list[str] = field(default_factory=list)


def decode_audio(data: bytes, *, sample_rate: int, max_duration_s: float, index: int = 0) -> DecodedAudio:
    """Decode, check, down-mix and resample one recording to `sample_rate` Hz.

    Raises InvalidInput (not audio, empty, bad rate, too long, NaN/Inf, too many channels) or
    UnsupportedMediaType (audio in a format that is not accepted).
    """
    where = f"recording {index}"
    if not data:
        raise InvalidInput(f"{where} is empty (0 bytes); send a {ACCEPTED} file")
    notes: list[str] = []
    frames, rate = _read(data, where=where, max_duration_s=max_duration_s, notes=notes)
    if not np.all(np.isfinite(frames)):
        raise InvalidInput(f"{where} contains NaN or infinite samples; send finite samples in [-1, 1]")
    mono = _downmix(frames)
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak > 1.0:
        notes.append(f"samples beyond [-1, 1] (peak {peak:.3g}) clipped")
        mono = np.clip(mono, -1.0, 1.0)
    if rate != sample_rate:
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
        # band-limiting overshoots near full scale (Gibbs); the model's contract is [-1, 1]
        mono = np.clip(soxr.resample(mono, rate, sample_rate, quality="HQ"), -1.0, 1.0)
    duration_s = frames.shape[0] / rate
    minimum = int(np.ceil(MIN_DURATION_S * sample_rate))
    if mono.shape[0] < minimum:
        notes.append(f"padded with silence to {MIN_DURATION_S} s")
        mono = np.pad(mono, (0, minimum - mono.shape[0]))
    return DecodedAudio(
        samples=np.ascontiguousarray(mono, dtype=np.float32),
        source_rate=rate,
        duration_s=duration_s,
        notes=notes,
    )


def _read(data: bytes, *, where: str, max_duration_s: float, notes: list[str]) -> tuple[FloatArray, int]:
    """Decode to (frames, channels) float32 and the rate: libsndfile first, PyAV for what it cannot read."""
    container = containers.sniff(data)
    if container == "Ogg":
        containers.check_ogg_complete(data, where=where)
    if container in PYAV_FIRST:
        frames, rate = containers.decode(data, container=container, where=where, max_frames_at=max_duration_s)
        _check_rate_and_channels(rate, frames.shape[1], where=where)
    else:
        try:
            frames, rate = _read_sndfile(data, where=where, max_duration_s=max_duration_s)
        except _Unreadable as failure:
            if container is None:
                kind = image.sniff(data)
                if kind in image.FORMATS:
                    raise InvalidInput(
                        f"{where} is a {kind} image, not a recording; send {ACCEPTED} audio"
                    ) from None
                raise InvalidInput(f"{where} is not readable {ACCEPTED} audio ({failure.reason})") from None
            # e.g. Ogg/Opus where libsndfile was built without Opus, or an MP3 variant it rejects
            frames, rate = containers.decode(
                data, container=container, where=where, max_frames_at=max_duration_s
            )
            _check_rate_and_channels(rate, frames.shape[1], where=where)
    if frames.shape[0] == 0:
        raise InvalidInput(f"{where} has no samples (zero-length audio); send a recording")
    if frames.shape[0] > max_duration_s * rate:
        raise InvalidInput(
            f"{where} is longer than this model's limit of {max_duration_s:g} s; cut it into shorter pieces"
        )
    if frames.shape[1] > 1:
        notes.append(f"{frames.shape[1]} channels down-mixed to mono by averaging")
    return frames, rate


class _Unreadable(Exception):
    """libsndfile could not read the bytes at all (the caller picks the message or another decoder)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _read_sndfile(data: bytes, *, where: str, max_duration_s: float) -> tuple[FloatArray, int]:
    """Open with libsndfile, check the header, read at most max_duration_s (+1 frame).

    Returns (samples of shape (frames, channels), sample rate).
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            kind, rate, channels = sound.format, int(sound.samplerate), int(sound.channels)
            _check_header(kind, rate, channels, where=where)
            limit = int(max_duration_s * rate) + 1
            stated = int(sound.frames)
            frames = sound.read(frames=limit, dtype="float32", always_2d=True)
    except (InvalidInput, UnsupportedMediaType):
        raise
    except Exception as exc:  # untrusted bytes: any decoder failure means "not audio we can read"
        raise _Unreadable(_reason(exc)) from exc
    if 0 < frames.shape[0] < min(stated, limit) - MAX_SHORTFALL_S * rate:
        raise InvalidInput(  # MP3 states its length in the Xing header; libsndfile stops at the cut
            f"{where} is a truncated or damaged {FORMATS[kind]} file: its header says {stated / rate:.2f} s "
            f"but only {frames.shape[0] / rate:.2f} s could be read; send the whole file"
        )
    return frames, rate


def _check_header(kind: str, rate: int, channels: int, *, where: str) -> None:
    if kind not in FORMATS:
        raise UnsupportedMediaType(f"{where} is {kind} audio, which is not accepted; send {ACCEPTED}")
    _check_rate_and_channels(rate, channels, where=where)


def _check_rate_and_channels(rate: int, channels: int, *, where: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidInput(
            f"{where} has a sample rate of {rate} Hz; accepted "
            f"rates are {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    if channels > MAX_CHANNELS:
        raise InvalidInput(
            f"{where} has {channels} channels; send mono or stereo (stereo is down-mixed to mono), "
            "e.g. pick the voice channel or down-mix first: ffmpeg -i in.wav -ac 1 out.wav"
        )


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.rsplit(": ", 1)[-1][:200]  # libsndfile prefixes the BytesIO repr; keep the reason


def _downmix(frames: FloatArray) -> FloatArray:
    return frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]  # (N, C) -> (N,)


# ---- CTC --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TimedSpan:
    """A character (or token) or a word with its start and end in seconds."""

    text: str
    start_s: float
    end_s: float


@dataclass(slots=True)
class Transcript:
    text: str
    confidence: float
    chars: list[TimedSpan]
    words: list[TimedSpan]


def ctc_greedy(
    log_probs: npt.NDArray[np.floating], *, vocabulary: list[str], blank: int, frame_shift_s: float
) -> Transcript:
    """Greedy CTC decoding of one item's (frames, vocabulary) scores.

    Frame argmaxes are collapsed (repeats merged, blanks dropped). `confidence` is the mean best-symbol
    probability over the frames that emit a symbol (over all frames when none does; 0 for no frames).
    "|", "▁" and " " symbols separate words. Scores go through log_softmax, which leaves log-probs as
    they are and turns logits into log-probs.
    """
    if log_probs.ndim != 2 or (log_probs.shape[0] and log_probs.shape[1] != len(vocabulary)):
        raise ValueError(
            f"CTC scores have shape {list(log_probs.shape)}; expected [frames, {len(vocabulary)}]"
        )
    if log_probs.shape[0] == 0:
        return Transcript(text="", confidence=0.0, chars=[], words=[])
    probs = np.exp(log_softmax(log_probs))
    best = np.argmax(probs, axis=1)  # (T, V) -> (T,)
    best_p = probs[np.arange(best.size), best]
    starts = np.flatnonzero(np.concatenate(([True], best[1:] != best[:-1])))  # first frame of each run
    ends = np.concatenate((starts[1:], [best.size]))
    chars = [
        TimedSpan(text=vocabulary[best[s]], start_s=float(s * frame_shift_s), end_s=float(e * frame_shift_s))
        for s, e in zip(starts, ends, strict=True)
        if best[s] != blank
    ]
    emitting = best != blank
    confidence = float(best_p[emitting].mean() if emitting.any() else best_p.mean())
    words = _words(chars)
    return Transcript(text=" ".join(w.text for w in words), confidence=confidence, chars=chars, words=words)


def _words(chars: list[TimedSpan]) -> list[TimedSpan]:
    """Group symbols into words at delimiter symbols (or a delimiter prefix such as "▁the")."""
    words: list[TimedSpan] = []
    current: TimedSpan | None = None
    for span in chars:
        starts_word = span.text.startswith(_WORD_DELIMITERS)
        piece = span.text.lstrip("".join(_WORD_DELIMITERS))
        if starts_word and current is not None:
            words.append(current)
            current = None
        if not piece:
            continue
        if current is None:
            current = TimedSpan(text=piece, start_s=span.start_s, end_s=span.end_s)
        else:
            current.text += piece
            current.end_s = span.end_s
    if current is not None:
        words.append(current)
    return words
