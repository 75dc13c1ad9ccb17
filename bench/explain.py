"""Explanations benchmark: faithfulness (deletion test), a randomised-weights sanity check, and speed.

    python bench/explain.py --images /tmp/demo_full --repo /tmp/demo_quick        # everything
    python bench/explain.py --only faithfulness --digits 200 --tweets 500 --recordings 30
    python bench/explain.py --only speed --seconds 15

One real server (`python -m service serve` on 127.0.0.1:6xxx) serves cnn/mlp from `--images` and text/
speech from `--repo`; explanations go through its HTTP API, deletions are scored with ONNX Runtime in
process on the same model files. Every figure is a ratio within this run (the machine is shared):

- deletion: mean drop of the explained quantity when the top-ranked features are removed, over the
  mean drop when as many random features are removed (digits: 10% of pixels set to the explanation's
  baseline, true-class probability; tweets: the top word vs a random word, deleted from the text,
  true-class probability; speech: each word's most important 0.1 s window vs a random window of the
  same length, silenced, CER increase).
- sanity: Spearman rank correlation between the cnn's maps and those of a copy whose weights were
  re-initialised (He-normal); near 0 means the maps depend on what the model learnt.
- speed: explanation p50 next to /predict p50 on the same input, and /predict p50 at concurrency 8
  with and without one explanation per second beside it.

Results go to bench/results/explain.json and stdout. bench/ may import models/ (held-out data).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import soundfile
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.explain.image import blur  # noqa: E402
from service.repository.config import ImageClassificationTask, load_config  # noqa: E402
from service.tasks.image import decode_image  # noqa: E402
from service.tasks.labels import softmax  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PORT_RANGE = range(6100, 6200)


# ---- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    for port in PORT_RANGE:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 6100-6199")


def combined_repository(images: Path, repo: Path, folder: Path, random_cnn: bool) -> Path:
    """cnn + mlp from `images`, text + speech from `repo` (symlinks), and optionally cnn_random."""
    for name, source in (("cnn", images), ("mlp", images), ("text", repo), ("speech", repo)):
        if (source / name).is_dir():
            (folder / name).symlink_to(source / name)
    if random_cnn:
        target = folder / "cnn_random"
        shutil.copytree(images / "cnn", target)
        config = (target / "config.yaml").read_text().replace("name: cnn\n", "name: cnn_random\n")
        (target / "config.yaml").write_text(config)
        reinitialise(target / "1" / "model.onnx")
    return folder


def reinitialise(path: Path, seed: int = 0) -> None:
    """Every weight tensor re-drawn He-normal (std sqrt(2 / fan_in)), every bias zero: the trained
    network's architecture with none of what it learnt."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype != np.float32 or array.ndim == 0:
            continue
        if array.ndim == 1:
            fresh = np.zeros_like(array)
        else:
            fan_in = int(np.prod(array.shape[1:])) if array.ndim > 2 else array.shape[0]
            fresh = rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), size=array.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(fresh, init.name))
    onnx.save(model, str(path))


class Server:
    def __init__(self, repository: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DEEPSERVE_MODEL_REPOSITORY": str(repository), "DEEPSERVE_PORT": str(self.port),
               "DEEPSERVE_HOST": "127.0.0.1", "DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]',
               "DEEPSERVE_REQUEST_TIMEOUT_S": "120"}
        self.log = log.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {log}")
            time.sleep(0.5)
        raise RuntimeError("server not ready in 300 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


# ---- digits ---------------------------------------------------------------------------------------


def heldout_digits(count: int) -> tuple[list[bytes], list[int]]:
    from models.data.images import digits, to_png

    data = digits(seed=0, fonts_per_class=0)
    xs, ys = data.test_x[:count], data.test_y[:count]
    return [to_png(x) for x in xs], [int(y) for y in ys]


def image_model(repository: Path, name: str) -> tuple[ort.InferenceSession, ImageClassificationTask]:
    config = load_config(repository / name / "config.yaml")
    assert isinstance(config.task, ImageClassificationTask)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    return session, config.task


def digit_deletion(
    client: httpx.Client,
    repository: Path,
    pngs: list[bytes],
    truth: list[int],
    *,
    fraction: float = 0.1,
    model: str = "cnn",
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    """True-class probability drop: top `fraction` of pixels by attribution vs random pixels, both set
    to the explanation's own baseline (black or blur)."""
    session, task = image_model(repository, model)
    rng = np.random.default_rng(0)
    top_drops, random_drops, times = [], [], []
    for data, label in zip(pngs, truth, strict=True):
        started = time.perf_counter()
        response = client.post(
            f"/v1/models/{model}/explain",
            params={"target": label, **(params or {})},
            content=data,
            headers={"content-type": "image/png"},
        )
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        body = response.json()
        attributions = np.asarray(body["attributions"]).ravel()
        x = decode_image(data, task).tensor  # (1, 28, 28)
        if body["baseline"]["kind"] == "black":
            base = np.full_like(x, (0.0 - task.mean[0]) / task.std[0])
        else:
            base = blur(x.transpose(1, 2, 0), max(task.size) / 8).transpose(2, 0, 1)
        k = int(round(fraction * attributions.size))
        jitter = rng.random(attributions.size) * 1e-12  # ties inside a cell: any order
        top = np.argsort(-(attributions + jitter))[:k]
        randoms = [rng.permutation(attributions.size)[:k] for _ in range(5)]
        batch = [x] + [_remove(x, base, top)] + [_remove(x, base, r) for r in randoms]
        probs = softmax(session.run(None, {task.input: np.stack(batch).astype(np.float32)})[0])[:, label]
        top_drops.append(probs[0] - probs[1])
        random_drops.append(float(np.mean(probs[0] - probs[2:])))
    return {"items": len(pngs), "method": body["method"], "baseline": body["baseline"]["kind"],
            "evaluations": body["evaluations"],
            "top_drop": float(np.mean(top_drops)), "random_drop": float(np.mean(random_drops)),
            "ratio": float(np.mean(top_drops) / max(np.mean(random_drops), 1e-12)),
            "explain_p50_ms": 1000 * statistics.median(times)}


def _remove(x: np.ndarray, base: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    out = x.reshape(-1).copy()
    out[pixels] = base.reshape(-1)[pixels]
    return out.reshape(x.shape)


def sanity(client: httpx.Client, pngs: list[bytes]) -> dict[str, Any]:
    """Spearman correlation of cnn vs re-initialised cnn maps (same input, same target label index)."""
    rhos = []
    for data in pngs:
        trained = client.post(
            "/v1/models/cnn/explain", content=data, headers={"content-type": "image/png"}
        ).json()
        target = trained["target"]
        fresh = client.post("/v1/models/cnn_random/explain", params={"target": target}, content=data,
                            headers={"content-type": "image/png"}).json()
        a, b = _cells(trained["attributions"]), _cells(fresh["attributions"])
        rhos.append(_spearman(a, b))
    return {
        "items": len(pngs),
        "mean_spearman": float(np.mean(rhos)),
        "mean_abs_spearman": float(np.mean(np.abs(rhos))),
    }


def _cells(attributions: list[list[float]]) -> np.ndarray:
    grid = np.asarray(attributions)
    return grid[::4, ::4].ravel()  # one value per 4x4 cell of the 28x28 map


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---- tweets ---------------------------------------------------------------------------------------


def tweet_deletion(client: httpx.Client, count: int) -> dict[str, Any]:
    """True-class probability drop: deleting the top word vs a random word (words of 2+ words texts)."""
    from models.data.text import load

    data = load(seed=0)
    labels = list(data.labels)
    pairs = [
        (t, y) for t, y in zip(data.test.texts, data.test.labels, strict=True) if len(t.split()) >= 2
    ][:count]
    rng = random.Random(0)
    top_drops, random_drops, flips = [], [], 0
    for text, y in pairs:
        body = client.post("/v1/models/text/explain", json={"text": text, "target": labels[y]}).json()
        words = body["words"]
        best = max(range(len(words)), key=lambda i: words[i]["score"])
        other = rng.randrange(len(words))
        variants = [text, _delete(text, words[best]), _delete(text, words[other])]
        predicted = client.post(
            "/v1/models/text/predict", json={"texts": variants, "return_probabilities": True}
        )
        probs = [p["probabilities"][labels[y]] for p in predicted.json()["predictions"]]
        top_drops.append(probs[0] - probs[1])
        random_drops.append(probs[0] - probs[2])
        flips += (
            predicted.json()["predictions"][1]["labels"][0]["label"]
            != predicted.json()["predictions"][0]["labels"][0]["label"]
        )
    return {"items": len(pairs), "test_split_size": len(data.test), "top_drop": float(np.mean(top_drops)),
            "random_drop": float(np.mean(random_drops)), "ratio": _ratio(top_drops, random_drops),
            "top_word_flips": flips}


def _ratio(top: list[float], rand: list[float]) -> float | None:
    """mean(top) / mean(random); None when random deletions do not lower the score on average."""
    return float(np.mean(top) / np.mean(rand)) if rand and np.mean(rand) > 0 else None


def _delete(text: str, word: dict[str, Any]) -> str:
    out = (text[: word["start"]] + text[word["end"]:]).strip()
    return out or "."


# ---- speech ---------------------------------------------------------------------------------------


def held_out_recordings(count: int) -> tuple[list[np.ndarray], list[str]]:
    """Utterances by espeak-ng voices the speech model never heard in training."""
    from models.data.speech import (
        Request,
        command_text,
        digits_text,
        espeak_voices,
        normalize_transcript,
        synthesize_many,
    )

    _, held = espeak_voices()
    rng = random.Random(1234)
    reqs = [Request(digits_text(rng) if rng.random() < 0.4 else command_text(rng), held[i % len(held)],
                    speed=rng.randint(130, 230), pitch=rng.randint(25, 75)) for i in range(count)]
    audio = synthesize_many(reqs, workers=1)
    return [np.asarray(a, dtype=np.float32) for a in audio], [normalize_transcript(r.text) for r in reqs]


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _cer(reference: str, hypothesis: str) -> float:
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(len(reference), 1)


def speech_deletion(client: httpx.Client, count: int) -> dict[str, Any]:
    """CER increase: silencing each word's top window vs as many random windows of the same length."""
    audios, refs = held_out_recordings(count)
    rng = np.random.default_rng(0)
    top_increase, random_increase, times = [], [], []
    for samples, ref in zip(audios, refs, strict=True):
        started = time.perf_counter()
        body = client.post("/v1/models/speech/explain", content=_wav(samples),
                           headers={"content-type": "audio/wav"}).json()
        times.append(time.perf_counter() - started)
        curve = body["curve"]
        chosen = []
        for word in body["words"]:
            inside = [
                i
                for i, c in enumerate(curve)
                if c["end_s"] > word["start_s"] and c["start_s"] < word["end_s"]
            ]
            if inside:
                chosen.append(max(inside, key=lambda i: curve[i]["score"]))
        if not chosen:  # nothing transcribed: no word to take a window from
            continue
        random_windows = (
            rng.choice(len(curve), size=len(chosen), replace=False) if len(curve) >= len(chosen) else []
        )
        variants = [samples, _silence(samples, curve, chosen), _silence(samples, curve, list(random_windows))]
        texts = [
            client.post(
                "/v1/models/speech/predict", content=_wav(v), headers={"content-type": "audio/wav"}
            ).json()["predictions"][0]["text"]
            for v in variants
        ]
        base = _cer(ref, texts[0])
        top_increase.append(_cer(ref, texts[1]) - base)
        random_increase.append(_cer(ref, texts[2]) - base)
    if not top_increase:
        return {
            "items": 0,
            "recordings": len(audios),
            "note": "the model transcribed no word of any recording",
        }
    return {
        "items": len(top_increase),
        "recordings": len(audios),
        "top_cer_increase": float(np.mean(top_increase)),
        "random_cer_increase": float(np.mean(random_increase)),
        "ratio": _ratio(top_increase, random_increase),
        "explain_p50_ms": 1000 * statistics.median(times),
        "mean_duration_s": float(np.mean([a.size / 16000 for a in audios])),
    }


def _silence(samples: np.ndarray, curve: list[dict[str, Any]], windows: list[int]) -> np.ndarray:
    out = samples.copy()
    for i in windows:
        out[int(round(curve[i]["start_s"] * 16000)): int(round(curve[i]["end_s"] * 16000))] = 0.0
    return out


# ---- speed ----------------------------------------------------------------------------------------


def p50(client: httpx.Client, repeats: int, method: str, url: str, **kwargs: Any) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.request(method, url, **kwargs).raise_for_status()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds the server process has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(client: httpx.Client, pid: int, repeats: int, url: str, **kwargs: Any) -> float:
    """Server CPU milliseconds per request, sequential requests (the figure that does not depend on load)."""
    before = server_cpu_s(pid)
    for _ in range(repeats):
        client.post(url, **kwargs).raise_for_status()
    return 1000 * (server_cpu_s(pid) - before) / repeats


def speed(
    client: httpx.Client, url: str, digit: bytes, seconds: float, repeats: int, pid: int
) -> dict[str, Any]:
    image = {"content": digit, "headers": {"content-type": "image/png"}}
    sentence = ("honestly this was the worst customer service i have ever had and i will never "
                "fly with them again because they lost my bag")  # 24 words
    two_s = held_out_recordings(1)[0][0]
    two_s = np.pad(two_s, (0, max(0, 32000 - two_s.size)))[:32000]
    recording = {"content": _wav(two_s), "headers": {"content-type": "audio/wav"}}
    out: dict[str, Any] = {}
    for name, model, kwargs in (
        ("cnn", "cnn", image),
        ("text_20_words", "text", {"json": {"text": sentence}}),
        ("speech_2s", "speech", recording),
    ):
        client.post(f"/v1/models/{model}/explain", **kwargs)  # warm
        out[name] = {"explain_p50_ms": p50(client, repeats, "POST", f"/v1/models/{model}/explain", **kwargs),
                     "predict_p50_ms": p50(client, repeats, "POST", f"/v1/models/{model}/predict", **kwargs)}
        out[name]["ratio"] = out[name]["explain_p50_ms"] / out[name]["predict_p50_ms"]
        out[name]["explain_cpu_ms"] = cpu_per_request(
            client, pid, repeats, f"/v1/models/{model}/explain", **kwargs
        )
        out[name]["predict_cpu_ms"] = cpu_per_request(
            client, pid, repeats, f"/v1/models/{model}/predict", **kwargs
        )
    quiet, busy = asyncio.run(_predict_under_explanations(url, digit, seconds))
    out["predict_c8"] = {"alone_p50_ms": quiet, "with_1_explain_per_s_p50_ms": busy, "ratio": busy / quiet}
    return out


async def _predict_under_explanations(url: str, digit: bytes, seconds: float) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def load(explaining: bool) -> float:
            times: list[float] = []
            stop = time.monotonic() + seconds

            async def worker() -> None:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    r = await client.post(
                        "/v1/models/cnn/predict", content=digit, headers={"content-type": "image/png"}
                    )
                    r.raise_for_status()
                    times.append(time.perf_counter() - started)

            async def explainer() -> None:
                while time.monotonic() < stop:
                    tick = time.monotonic()
                    r = await client.post(
                        "/v1/models/cnn/explain", content=digit, headers={"content-type": "image/png"}
                    )
                    r.raise_for_status()
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))

            tasks = [worker() for _ in range(8)] + ([explainer()] if explaining else [])
            await asyncio.gather(*tasks)
            return 1000 * statistics.median(times)

        results: dict[bool, list[float]] = {False: [], True: []}
        for explaining in (False, True, False, True):  # interleaved: the shared machine drifts
            results[explaining].append(await load(explaining))
        return statistics.mean(results[False]), statistics.mean(results[True])


# ---- pictures for docs/explanations.md -------------------------------------------------------------


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def drawn_digit(digit: str, size: int = 280) -> bytes:
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (size, size), (245, 242, 236))
    ImageDraw.Draw(page).text((size // 2, size // 2), digit, fill=(30, 30, 60), font=_font(int(size * 0.8)),
                              anchor="mm", stroke_width=size // 40, stroke_fill=(30, 30, 60))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def _colour(score: float, peak: float) -> tuple[int, int, int]:
    strength = min(1.0, abs(score) / peak) if peak > 0 else 0.0
    target = (220, 30, 30) if score >= 0 else (30, 90, 230)
    return tuple(int(255 + (c - 255) * 0.85 * strength) for c in target)  # type: ignore[return-value]


def sentence_png(words: list[dict[str, Any]], title: str) -> bytes:
    """Each word on a background red (pushes towards the label) or blue (away), by |score|."""
    from PIL import Image, ImageDraw

    font, small = _font(26), _font(16)
    peak = max(abs(w["score"]) for w in words)
    widths = [
        int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(w["text"], font=font)) + 12 for w in words
    ]
    width = max(600, sum(widths) + 6 * len(words) + 20)
    page = Image.new("RGB", (width, 110), "white")
    draw = ImageDraw.Draw(page)
    draw.text((10, 8), title, fill=(40, 40, 40), font=small)
    x = 10
    for word, w in zip(words, widths, strict=True):
        draw.rectangle((x, 40, x + w, 80), fill=_colour(word["score"], peak))
        draw.text((x + 6, 45), word["text"], fill="black", font=font)
        draw.text((x + 4, 84), f"{word['score']:+.2f}", fill=(90, 90, 90), font=small)
        x += w + 6
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def recording_png(body: dict[str, Any], samples: np.ndarray) -> bytes:
    """The waveform, each 0.1 s window's score as a bar, each word's score as a labelled span."""
    from PIL import Image, ImageDraw

    width, height, left = 900, 300, 20
    duration = samples.size / 16000
    page = Image.new("RGB", (width + 2 * left, height), "white")
    draw = ImageDraw.Draw(page)
    draw.text((left, 6), f"'{body['transcript']}': {body['explained']}", fill=(40, 40, 40), font=_font(15))

    def x(t: float) -> int:
        return left + int(width * t / duration)

    step = max(1, samples.size // width)  # waveform envelope, top band
    for i in range(width):
        chunk = samples[i * step:(i + 1) * step]
        if chunk.size:
            amp = float(np.max(np.abs(chunk)))
            draw.line((left + i, 70 - 35 * amp, left + i, 70 + 35 * amp), fill=(150, 150, 150))
    scores = [c["score"] for c in body["curve"]] + [w["score"] for w in body["words"]]
    peak = max(max(abs(v) for v in scores), 1e-9)
    base = 190
    draw.line((left, base, left + width, base), fill=(0, 0, 0))
    curve_peak = max([abs(c["score"]) for c in body["curve"]] + [1e-9])
    for c in body["curve"]:  # window bars, middle band: red raises the transcript's log-probability
        h = 70 * c["score"] / curve_peak
        draw.rectangle((x(c["start_s"]) + 1, min(base, base - h), x(c["end_s"]) - 1, max(base, base - h)),
                       fill=(220, 30, 30) if h >= 0 else (30, 90, 230))
    for w in body["words"]:  # word spans, bottom band
        draw.rectangle(
            (x(w["start_s"]), 225, x(w["end_s"]), 255), fill=_colour(w["score"], peak), outline=(60, 60, 60)
        )
        draw.text((x(w["start_s"]) + 3, 228), w["text"], fill="black", font=_font(18))
        draw.text((x(w["start_s"]) + 3, 262), f"{w['score']:+.1f}", fill=(90, 90, 90), font=_font(14))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def docs_pictures(client: httpx.Client, folder: Path, recording: Path | None) -> dict[str, Any]:
    """The pictures and example answers docs/explanations.md shows, made by the running server."""
    folder.mkdir(parents=True, exist_ok=True)
    examples: dict[str, Any] = {}
    seven = drawn_digit("7")
    (folder / "digit-7-input.png").write_bytes(seven)
    for method in ("occlusion", "kernel-shap"):
        body = client.post(f"/v1/models/cnn/explain?method={method}", content=seven,
                           headers={"content-type": "image/png"}).json()
        (folder / f"digit-7-{method}.png").write_bytes(base64.b64decode(body["heatmap_png"]))
        examples[f"cnn_{method}"] = {k: v for k, v in body.items()
                                     if k not in ("attributions", "image_attributions", "heatmap_png")}
    sentence = "worst customer service ever, rude staff and my bag is lost again"
    body = client.post("/v1/models/text/explain", json={"text": sentence, "target": "negative"}).json()
    (folder / "sentence.png").write_bytes(
        sentence_png(
            body["words"], f"text model: {body['explained']}, KernelSHAP, {body['evaluations']} evaluations"
        )
    )
    examples["text"] = body
    if recording is not None:
        samples, rate = soundfile.read(recording, dtype="float32")
        body = client.post("/v1/models/speech/explain", content=recording.read_bytes(),
                           headers={"content-type": "audio/wav"}).json()
        import soxr

        mono = soxr.resample(samples, rate, 16000) if rate != 16000 else samples
        (folder / "recording.png").write_bytes(recording_png(body, np.asarray(mono, dtype=np.float32)))
        examples["speech"] = body
    (folder / "examples.json").write_text(json.dumps(examples, indent=2))
    return examples


# ---- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=Path, default=Path("/tmp/demo_full"), help="repository with cnn, mlp"
    )
    parser.add_argument(
        "--repo", type=Path, default=Path("/tmp/demo_quick"), help="repository with text, speech"
    )
    parser.add_argument("--only", action="append",
                        choices=["faithfulness", "digits", "tweets", "speech", "sanity", "speed", "docs"],
                        help="parts to run (faithfulness = digits + tweets + speech); default: all but docs")
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs" / "explanations", help="where --only docs writes"
    )
    parser.add_argument("--recording", type=Path, help="a WAV for the docs' speech picture")
    parser.add_argument("--digits", type=int, default=200)
    parser.add_argument("--tweets", type=int, default=500)
    parser.add_argument("--recordings", type=int, default=30)
    parser.add_argument("--sanity-digits", type=int, default=50)
    parser.add_argument("--digit-option", action="append", default=[], metavar="NAME=VALUE",
                        help="explain option for the digit deletion test, e.g. method=kernel-shap budget=100")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "explain.json")
    args = parser.parse_args()
    parts = set(args.only or ["faithfulness", "sanity", "speed"])
    if "faithfulness" in parts:
        parts |= {"digits", "tweets", "speech"}
    results: dict[str, Any] = {"images": str(args.images), "repo": str(args.repo), "cpus": os.cpu_count(),
                               "note": "shared machine: compare ratios within this run"}
    with tempfile.TemporaryDirectory() as tmp:
        repository = combined_repository(args.images, args.repo, Path(tmp), random_cnn="sanity" in parts)
        server = Server(repository, Path(tmp) / "server.log")
        try:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                pngs, truth = heldout_digits(max(args.digits, args.sanity_digits))
                if "digits" in parts:
                    params = dict(option.split("=", 1) for option in args.digit_option)
                    results["digits_cnn"] = digit_deletion(
                        client, args.images, pngs[: args.digits], truth[: args.digits], params=params
                    )
                    print(json.dumps({"digits_cnn": results["digits_cnn"]}), flush=True)
                if "tweets" in parts:
                    results["tweets"] = tweet_deletion(client, args.tweets)
                    print(json.dumps({"tweets": results["tweets"]}), flush=True)
                if "speech" in parts:
                    results["speech"] = speech_deletion(client, args.recordings)
                    print(json.dumps({"speech": results["speech"]}), flush=True)
                if "sanity" in parts:
                    results["sanity_cnn"] = sanity(client, pngs[: args.sanity_digits])
                    print(json.dumps({"sanity_cnn": results["sanity_cnn"]}), flush=True)
                if "docs" in parts:
                    docs_pictures(client, args.docs, args.recording)
                    return
                if "speed" in parts:
                    results["speed"] = speed(client, server.url, pngs[0], args.seconds, args.repeats,
                                             server.process.pid)
                    print(json.dumps({"speed": results["speed"]}), flush=True)
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
