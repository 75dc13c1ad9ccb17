"""What browsers and phones record, through `decode_audio` and `POST /v1/models/{name}/predict`.

Files are made here with PyAV's encoders (libopus, FFmpeg's AAC, LAME): WebM/Opus as Chrome and Firefox's
MediaRecorder write it (also streamed, without a duration), Ogg/Opus, MP4/AAC as Safari and iPhones
write it, and MP3. Each decodes to the tone it holds at the right length; cut or damaged copies are a
4xx naming the container.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import AppClient
from task_models import write_speech_model

from service.errors import InvalidInput
from service.tasks.audio import decode_audio

RATE = 16000
CASES = {  # name: (container format, encoder, encoder rate, muxer options, content type)
    "webm-opus": ("webm", "libopus", 48000, {}, "audio/webm"),
    "webm-opus-streamed": ("webm", "libopus", 48000, {"live": "1"}, "audio/webm"),
    "ogg-opus": ("ogg", "libopus", 48000, {}, "audio/ogg"),
    "mp4-aac": ("mp4", "aac", 44100, {}, "audio/mp4"),
    "mp3": ("mp3", "libmp3lame", 44100, {}, "audio/mpeg"),
}


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode(case: str, seconds: float = 1.0, *, channels: int = 1) -> bytes:
    fmt, codec, rate, options, _ = CASES[case]
    layout = "mono" if channels == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt, options=options) as box:
        stream = box.add_stream(codec, rate=rate, layout=layout)
        samples = np.repeat(tone(seconds, rate)[None, :], channels, axis=0)  # (C, N)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=rate)
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            box.mux(stream.encode(chunk))
        box.mux(stream.encode(None))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {case: encode(case) for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_browser_and_phone_recordings_decode_to_the_tone_they_hold(
    files: dict[str, bytes], case: str
) -> None:
    decoded = decode_audio(files[case], sample_rate=RATE, max_duration_s=5)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.duration_s == pytest.approx(1.0, abs=0.06)  # AAC and LAME add priming/padding frames
    assert decoded.notes == [f"resampled from {CASES[case][2]} Hz to {RATE} Hz"]  # nothing clipped or padded
    spectrum = np.abs(np.fft.rfft(decoded.samples[:RATE]))  # 1 s -> 1 Hz bins
    assert abs(int(np.argmax(spectrum)) - 440) <= 2
    assert 0.25 < np.abs(decoded.samples).max() <= 0.4


def test_stereo_recordings_are_down_mixed() -> None:
    decoded = decode_audio(encode("webm-opus", channels=2), sample_rate=RATE, max_duration_s=5)
    assert "2 channels down-mixed to mono by averaging" in decoded.notes


@pytest.mark.parametrize("case", list(CASES))
def test_longer_than_the_limit_is_refused(files: dict[str, bytes], case: str) -> None:
    with pytest.raises(InvalidInput, match="longer than this model's limit of 0.5 s"):
        decode_audio(files[case], sample_rate=RATE, max_duration_s=0.5)


DAMAGE = {
    "cut-half": lambda data: data[: len(data) // 2],
    "cut-90%": lambda data: data[: len(data) * 9 // 10],
    "zeroed-middle": lambda data: data[: len(data) // 3] + bytes(200) + data[len(data) // 3 + 200:],
}
NAMES = {"webm-opus": "WebM", "webm-opus-streamed": "WebM", "ogg-opus": "Ogg", "mp4-aac": "MP4", "mp3": "MP3"}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("case", list(NAMES))
def test_cut_or_damaged_recordings_are_refused_naming_the_container(
    files: dict[str, bytes], case: str, damage: str
) -> None:
    with pytest.raises(InvalidInput, match=rf"(truncated|damaged) (.* )?{NAMES[case]} file"):
        decode_audio(DAMAGE[damage](files[case]), sample_rate=RATE, max_duration_s=5)


@pytest.mark.parametrize("case", list(NAMES))
def test_a_bare_container_header_is_refused(files: dict[str, bytes], case: str) -> None:
    with pytest.raises(InvalidInput, match="recording 0"):
        decode_audio(files[case][:64], sample_rate=RATE, max_duration_s=5)


async def test_predict_takes_every_container_and_refuses_a_cut_one(
    repo: Path, app_client: AppClient, files: dict[str, bytes]
) -> None:
    write_speech_model(repo, "speech")
    async with app_client() as client:
        for case, (_, _, rate, _, media) in CASES.items():
            upload = {"file": (f"rec.{case}", files[case], media)}
            answer = await client.post("/v1/models/speech/predict", files=upload)
            assert answer.status_code == 200, (case, answer.text)
            prediction = answer.json()["predictions"][0]
            assert prediction["duration_s"] == pytest.approx(1.0, abs=0.06)
            assert f"resampled from {rate} Hz" in prediction["notes"][0]
            raw = await client.post(
                "/v1/models/speech/predict", content=files[case], headers={"content-type": media}
            )
            assert raw.status_code == 200, (case, raw.text)
            cut = await client.post("/v1/models/speech/predict", content=files[case][: len(files[case]) // 2],
                                    headers={"content-type": media})
            assert cut.status_code == 400 and cut.json()["code"] == "invalid_input", (case, cut.text)
            assert "truncated" in cut.json()["error"] or "damaged" in cut.json()["error"]
