"""Served req/s and p50 of model pairs (FP32 vs INT8, scratch vs fine-tuned) in one run, interleaved.

    python bench/pairs.py --repo REPO --pair mlp:mlp-int8 --pair cnn:cnn-int8 --pair text:minilm

Starts `python -m service serve` on a loopback port over REPO, then for each concurrency (1 and 8) and
each round runs every model of every pair for `--seconds` with that many concurrent clients (httpx),
alternating, so both sides of a pair see the same machine. Image models get a v2 infer of one held-out
digit (JSON); text models a /v1 predict of a tweet; speech models a /v1 predict of a 2 s WAV (base64).
Reports req/s, p50 latency and the ratio per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
TWEET = "@united thanks for the quick rebooking, the crew in Denver was great!"


def request_for(model: str, metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    task = (metadata.get("parameters") or {}).get("task") or {}
    if task.get("type") in ("text-classification", "embedding"):
        return f"/v1/models/{model}/predict", {"text": TWEET}
    if task.get("type") in ("speech-recognition", "audio-classification"):
        return f"/v1/models/{model}/predict", {"audio": wav_base64(seconds=2.0)}
    spec = metadata["inputs"][0]
    shape = [1 if d < 0 else d for d in spec["shape"]]
    data = np.random.default_rng(0).random(int(np.prod(shape))).round(4).tolist()
    return f"/v2/models/{model}/infer", {"inputs": [{"name": spec["name"], "datatype": spec["datatype"],
                                                      "shape": shape, "data": data}]}


def wav_base64(*, seconds: float, rate: int = 16000) -> str:
    """A chirp with a little noise, as 16-bit mono WAV: the model's cost depends on the length only."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.01 * rng.standard_normal(len(t))
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


async def load(client: httpx.AsyncClient, path: str, body: dict[str, Any], *, concurrency: int,
               seconds: float) -> tuple[float, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            response = await client.post(path, json=body)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), statistics.median(latencies) * 1000


async def run(url: str, pairs: list[tuple[str, str]], *, seconds: float, rounds: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        requests = {}
        for model in {m for pair in pairs for m in pair}:
            requests[model] = request_for(model, (await client.get(f"/v2/models/{model}")).json())
        for concurrency in (1, 8):
            results: dict[str, list[tuple[float, float]]] = {m: [] for m in requests}
            for _ in range(rounds):
                for a, b in pairs:
                    for model in (a, b):
                        results[model].append(await load(client, *requests[model], concurrency=concurrency,
                                                         seconds=seconds))
            for a, b in pairs:
                ra, rb = (statistics.mean(r for r, _ in results[m]) for m in (a, b))
                pa, pb = (statistics.mean(p for _, p in results[m]) for m in (a, b))
                print(
                    f"c={concurrency}  {a}: {ra:.1f} req/s p50 {pa:.1f} ms  |  {b}: {rb:.1f} req/s p50 "
                    f"{pb:.1f} ms  |  {b}/{a} req/s {rb / ra:.2f}x",
                    flush=True,
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--pair", action="append", required=True, metavar="A:B")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.pair]
    env = {**os.environ, "DEEPSERVE_MODEL_REPOSITORY": str(args.repo), "DEEPSERVE_PORT": str(args.port),
           "DEEPSERVE_HOST": "127.0.0.1", "DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]'}
    models = sorted({m for pair in pairs for m in pair})
    env["DEEPSERVE_LOAD_MODELS"] = "[" + ",".join(f'"{m}"' for m in models) + "]"
    server = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        asyncio.run(run(url, pairs, seconds=args.seconds, rounds=args.rounds))  # type: ignore[arg-type]
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
