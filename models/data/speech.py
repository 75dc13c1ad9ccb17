"""Spoken commands and digit strings, synthesised offline with espeak-ng and flite.

Each utterance is a short command ("turn on the kitchen light") or a digit string ("three one four")
spoken by one *voice*: an espeak-ng accent with a voice variant (`en-us+f3`) or a flite voice (`slt`).
Clean audio is cached per (engine, voice, text, speed, pitch) as 16 kHz float32 under a cache dir, so
repeated builds skip synthesis; noise and gain are applied afterwards from the seed, so a dataset is a
pure function of its seed. Whole voices are held out for evaluation: none of their audio is trained on.

`load_folder` reads your own recordings instead: WAV files beside a CSV `file,transcript`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
BLANK = "<blank>"
VOCABULARY: list[str] = [BLANK, " ", *"abcdefghijklmnopqrstuvwxyz", "'"]
"""CTC symbols by index: blank, space, a..z, apostrophe."""
DEFAULT_CACHE = Path.home() / ".cache" / "deepserve" / "speech"
_SYNTH_VERSION = 1  # bump when synthesis changes so old cache entries are not reused

Audio = npt.NDArray[np.float32]
Engine = Literal["espeak-ng", "flite"]

# ---- what is said --------------------------------------------------------------------------------

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_ROOMS = ["kitchen", "bedroom", "bathroom", "living room", "office", "garage", "hall"]
_THINGS = ["light", "lights", "fan", "heater", "radio", "tv", "music", "alarm"]
_COMMANDS: list[Callable[[random.Random], str]] = [
    lambda r: f"turn {r.choice(['on', 'off'])} the {r.choice(_THINGS)}",
    lambda r: f"turn {r.choice(['on', 'off'])} the {r.choice(_ROOMS)} {r.choice(_THINGS)}",
    lambda r: f"go {r.choice(['left', 'right', 'up', 'down', 'back', 'forward', 'home'])}",
    lambda r: f"{r.choice(['open', 'close', 'lock', 'unlock'])} the {r.choice(['door', 'window', 'garage'])}",
    lambda r: f"volume {r.choice(['up', 'down'])}",
    lambda r: f"set a timer for {r.choice(DIGITS[1:])} minutes",
    lambda r: f"call {r.choice(['mom', 'dad', 'home', 'the office'])}",
    lambda r: r.choice(
        [
            "stop", "start", "yes", "no", "next", "previous", "pause", "play music", "what's the time",
            "cancel", "don't stop", "it's cold", "lights off", "help",
        ]
    ),
]


def command_text(rng: random.Random) -> str:
    """A random short command phrase."""
    return rng.choice(_COMMANDS)(rng)


def digits_text(rng: random.Random) -> str:
    """A random string of two to five spoken digits."""
    return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 5)))


def normalize_transcript(text: str) -> str:
    """Lower-case, keep only vocabulary characters, squeeze spaces."""
    kept = "".join(c if c in VOCABULARY[1:] else " " for c in text.lower())
    return " ".join(kept.split())


def encode(text: str) -> list[int]:
    """Transcript -> CTC label indices (blank excluded)."""
    return [VOCABULARY.index(c) for c in normalize_transcript(text)]


# ---- who says it ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Voice:
    """One synthetic speaker: an engine, its voice, and (espeak-ng) a variant."""

    engine: Engine
    name: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")


ESPEAK_ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
                  "en-gb-scotland"]
ESPEAK_VARIANTS = [
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt3", "Andy",
    "Annie", "edward", "linda", "steph", "grandpa", "david", "croak", "shelby",
]
HELD_OUT_ACCENTS = {"en-gb-scotland"}
"""espeak-ng accents never trained on: every voice with one is evaluation-only."""
HELD_OUT_VARIANTS = {"m4", "f2", "klatt3", "linda"}
"""espeak-ng variants never trained on."""
FLITE_TRAIN = ["awb", "kal16"]
FLITE_HELD_OUT = ["slt", "rms"]


def espeak_voices() -> tuple[list[Voice], list[Voice]]:
    """(training voices, held-out voices): held out if the accent or the variant is held out."""
    train: list[Voice] = []
    held: list[Voice] = []
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS:
            voice = Voice("espeak-ng", accent, variant)
            (held if accent in HELD_OUT_ACCENTS or variant in HELD_OUT_VARIANTS else train).append(voice)
    return train, held


# ---- synthesis -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One utterance to synthesise: text, voice, speed (words per minute), pitch (0-99, espeak-ng)."""

    text: str
    voice: Voice
    speed: int = 170
    pitch: int = 50

    def key(self) -> str:
        raw = f"{_SYNTH_VERSION}|{self.voice}|{self.speed}|{self.pitch}|{self.text}"
        return hashlib.sha1(raw.encode()).hexdigest()


def _command(req: Request, wav: Path) -> list[str]:
    if req.voice.engine == "espeak-ng":
        name = req.voice.name + (f"+{req.voice.variant}" if req.voice.variant else "")
        return ["espeak-ng", "-v", name, "-s", str(req.speed), "-p", str(req.pitch), "-w", str(wav), req.text]
    # flite: 170 wpm is its natural pace; duration_stretch > 1 is slower
    stretch = f"{170 / req.speed:.3f}"
    return ["flite", "-voice", req.voice.name, "--setf", f"duration_stretch={stretch}",
            "-t", req.text, "-o", str(wav)]


_NPY_HEADER_LOCK = threading.Lock()
"""`ast.parse` run in two threads at once failed on CPython 3.11.7 ("SystemError: AST constructor
recursion depth mismatch"); `synthesize_many`'s threads read cached audio with np.load, which parses
each file's header with ast.literal_eval. It failed one CI run this way."""


def synthesize(req: Request, *, cache_dir: Path = DEFAULT_CACHE) -> Audio:
    """Clean 16 kHz mono float32 audio for one request, from the cache when present."""
    path = cache_dir / req.key()[:2] / f"{req.key()}.npy"
    if path.exists():
        with _NPY_HEADER_LOCK:  # np.load parses the .npy header with ast.literal_eval (see the lock)
            return np.load(path)
    binary = req.voice.engine
    if shutil.which(binary) is None:
        raise FileNotFoundError(f"{binary} is not installed; apt-get install -y espeak-ng flite")
    with tempfile.TemporaryDirectory(prefix="deepserve-tts-") as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(_command(req, wav), check=True, capture_output=True, timeout=60)
        data, rate = sf.read(io.BytesIO(wav.read_bytes()), dtype="float32", always_2d=True)
    audio = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(f".{random.getrandbits(32):08x}.tmp")
    with tmp_path.open("wb") as fh:  # write then rename: concurrent builds never see a torn file
        np.save(fh, audio)
    tmp_path.replace(path)
    return audio


def synthesize_many(
    reqs: Sequence[Request], *, cache_dir: Path = DEFAULT_CACHE, workers: int = 2, progress: bool = False
) -> list[Audio]:
    """Synthesise in order with a few worker threads (each runs one TTS process at a time)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results: Iterable[Audio] = pool.map(lambda r: synthesize(r, cache_dir=cache_dir), reqs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(reqs), desc="synthesise speech", leave=False)
        return list(results)


# ---- noise and gain ------------------------------------------------------------------------------


def augment(clean: Audio, rng: np.random.Generator, *, snr_db: tuple[float, float] = (8.0, 30.0)) -> Audio:
    """Pad with random silence, add coloured noise at a random SNR, apply a random gain."""
    lead, tail = rng.integers(0, int(0.25 * SAMPLE_RATE), size=2)
    x = np.concatenate([np.zeros(lead, np.float32), clean, np.zeros(tail, np.float32)])
    white = rng.standard_normal(len(x))
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(len(x), d=1.0 / SAMPLE_RATE)
    alpha = rng.uniform(0.0, 2.0)  # 0 white, 1 pink, 2 brown
    spectrum /= np.maximum(freqs, 20.0) ** (alpha / 2)
    noise = np.fft.irfft(spectrum, n=len(x))
    speech_power = float(np.mean(clean.astype(np.float64) ** 2)) + 1e-10
    noise *= np.sqrt(speech_power / (np.mean(noise**2) + 1e-12) / 10 ** (rng.uniform(*snr_db) / 10))
    y = x + noise
    y *= rng.uniform(0.1, 0.9) / (np.abs(y).max() + 1e-9)
    return y.astype(np.float32)


# ---- data sets -----------------------------------------------------------------------------------


@dataclass(slots=True)
class SpeechSet:
    """Utterances with their transcripts and the voice that spoke each."""

    audio: list[Audio] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    voices: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    """What was synthesised for each item (empty for recordings read from a folder)."""

    def __len__(self) -> int:
        return len(self.audio)

    def seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE


@dataclass(slots=True)
class SpeechData:
    """Training set and evaluation sets (held-out espeak-ng voices; flite voices when synthesised)."""

    train: SpeechSet
    test: SpeechSet
    test_flite: SpeechSet
    train_voices: list[str]
    test_voices: list[str]
    flite_voices: list[str]


def _requests(rng: random.Random, voices: Sequence[Voice], n: int) -> list[Request]:
    reqs = []
    for i in range(n):
        text = digits_text(rng) if rng.random() < 0.4 else command_text(rng)
        # cycle voices so each is heard about equally often
        voice = voices[i % len(voices)] if i < len(voices) else rng.choice(voices)
        reqs.append(Request(text, voice, speed=rng.randint(130, 230), pitch=rng.randint(25, 75)))
    return reqs


def _to_set(reqs: Sequence[Request], clean: Sequence[Audio], rng: np.random.Generator) -> SpeechSet:
    out = SpeechSet()
    for req, audio in zip(reqs, clean, strict=True):
        out.audio.append(augment(audio, rng))
        out.transcripts.append(normalize_transcript(req.text))
        out.voices.append(str(req.voice))
        out.requests.append(req)
    return out


def make_speech_data(
    *,
    seed: int,
    n_train: int,
    n_test: int,
    n_flite_test: int,
    cache_dir: Path = DEFAULT_CACHE,
    workers: int = 2,
    progress: bool = False,
) -> SpeechData:
    """Synthesise a seeded training set and held-out-voice test sets (same seed, same data)."""
    espeak_train, espeak_held = espeak_voices()
    flite_train = [Voice("flite", v) for v in FLITE_TRAIN]
    flite_held = [Voice("flite", v) for v in FLITE_HELD_OUT]
    rng = random.Random(seed)
    n_flite_train = n_train // 8
    train_reqs = (
        _requests(rng, espeak_train, n_train - n_flite_train) + _requests(rng, flite_train, n_flite_train)
    )
    test_reqs = _requests(rng, espeak_held, n_test)
    flite_reqs = _requests(rng, flite_held, n_flite_test)
    clean = synthesize_many(train_reqs + test_reqs + flite_reqs, cache_dir=cache_dir, workers=workers,
                            progress=progress)
    noise = np.random.default_rng(seed)
    a, b = len(train_reqs), len(train_reqs) + len(test_reqs)
    return SpeechData(
        train=_to_set(train_reqs, clean[:a], noise),
        test=_to_set(test_reqs, clean[a:b], noise),
        test_flite=_to_set(flite_reqs, clean[b:], noise),
        train_voices=[str(v) for v in espeak_train + flite_train],
        test_voices=[str(v) for v in espeak_held],
        flite_voices=[str(v) for v in flite_held],
    )


def load_folder(folder: Path) -> SpeechSet:
    """WAV files listed in `folder/*.csv` (columns `file,transcript`), as 16 kHz mono float32."""
    tables = sorted(folder.glob("*.csv"))
    if not tables:
        raise FileNotFoundError(f"{folder}: no CSV with columns file,transcript")
    out = SpeechSet()
    with tables[0].open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            data, rate = sf.read(folder / row["file"], dtype="float32", always_2d=True)
            audio = data.mean(axis=1)
            if rate != SAMPLE_RATE:
                audio = soxr.resample(audio, rate, SAMPLE_RATE)
            out.audio.append(np.ascontiguousarray(audio, dtype=np.float32))
            out.transcripts.append(normalize_transcript(row["transcript"]))
            out.voices.append(f"file:{row['file']}")
    return out


def split_set(data: SpeechSet, *, holdout: float, seed: int) -> tuple[SpeechSet, SpeechSet]:
    """Random (train, test) split of a folder set; recordings carry no voice to hold out."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = max(1, int(round(holdout * len(data))))
    parts = (order[n_test:], order[:n_test])
    return tuple(  # type: ignore[return-value]
        SpeechSet([data.audio[i] for i in p], [data.transcripts[i] for i in p], [data.voices[i] for i in p])
        for p in parts
    )
