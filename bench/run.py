"""Benchmark: the server under wrk on loopback against raw in-process ONNX Runtime, in one run.

    python bench/run.py                 # full: 3 repeats x 10 s per point, medians
    python bench/run.py --quick         # 1 repeat x 4 s per point
    python bench/run.py --rss model_repository --soak 300   # idle RSS, RSS after 1 and 5 minutes of load

Figures are ratios taken in the same run (the machine is shared and noisy): server req/s over raw
ONNX Runtime items/s at its best batch size on the same model with the same session options. For
the ResNet-18-sized model every wrk run is paired with a raw run just before it ("paired"), since a
shared machine's speed drifts over the minutes a run takes.
Results go to bench/results/ (JSON and a Markdown table) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from server import run_server  # noqa: E402


@dataclass
class Point:
    model: str
    body: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    raw_paired: float | None = None
    """Raw ONNX Runtime items/s at its best batch size, measured right before each server run (median)."""


def raw_items_per_s(onnx_file: Path, shape: tuple[int, ...], batches: list[int], seconds: float) -> dict[int, float]:
    """Items/s of an in-process session (default options, like the server's) per batch size."""
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    out: dict[int, float] = {}
    for batch in batches:
        x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
        for _ in range(3):
            session.run(None, {"input": x})
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or runs < 5:
            session.run(None, {"input": x})
            runs += 1
        out[batch] = runs * batch / elapsed
    return out


def json_body(shape: tuple[int, ...], name: str = "input") -> tuple[bytes, str, str | None]:
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return json.dumps(body).encode(), "application/json", None


def binary_body(shape: tuple[int, ...]) -> tuple[bytes, str, str | None]:
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()
    return header + x.tobytes(), "application/octet-stream", str(len(header))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def wrk(url: str, body: tuple[bytes, str, str | None], *, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as f:
        f.write(body[0])
    args = [f.name, body[1]] + ([body[2]] if body[2] else [])
    cmd = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--latency",
           "--timeout", "30s", "-s", str(HERE / "post.lua"), url, "--", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors: .*?timeout (\d+)", out))
    return rps, p50, p99, errors


def measure(url: str, model: str, body_kind: str, shape: tuple[int, ...], concurrencies: list[int],
            repeats: int, seconds: float, raw: Callable[[], float] | None = None) -> list[Point]:
    """wrk at each concurrency, `repeats` times; with `raw`, each wrk run is paired with a raw ONNX
    Runtime run just before it, so slow drift of a shared machine cancels out of the ratio."""
    body = json_body(shape) if body_kind == "json" else binary_body(shape)
    points = []
    for c in concurrencies:
        wrk(f"{url}/v2/models/{model}/infer", body, concurrency=c, seconds=1)  # warm connections and caches
        runs, raws = [], []
        for _ in range(repeats):
            if raw is not None:
                raws.append(raw())
            runs.append(wrk(f"{url}/v2/models/{model}/infer", body, concurrency=c, seconds=seconds))
        point = Point(model, body_kind, c, statistics.median(r[0] for r in runs),
                      statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
                      sum(r[3] for r in runs), statistics.median(raws) if raws else None)
        paired = f"  raw {point.raw_paired:7.1f} items/s" if point.raw_paired else ""
        print(f"  {model:18s} {body_kind:6s} c={c:<3d} {point.rps:8.1f} req/s  p50 {point.p50_ms:7.2f} ms  "
              f"p99 {point.p99_ms:7.2f} ms  errors {point.errors}{paired}", flush=True)
        points.append(point)
    return points


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def table(points: list[Point], raw: dict[str, dict[int, float]]) -> str:
    lines = ["| model | body | batching | concurrency | req/s | p50 ms | p99 ms | errors | % of raw best | % of raw, paired |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        base = p.model.removesuffix("_nobatch")
        best = max(raw[base].values())
        batching = "off" if p.model.endswith("_nobatch") else "on"
        lines.append(f"| {base} | {p.body} | {batching} | {p.concurrency} | {p.rps:.0f} | {p.p50_ms:.2f} | "
                     f"{p.p99_ms:.2f} | {p.errors} | {100 * p.rps / best:.0f}% | "
                     f"{f'{100 * p.rps / p.raw_paired:.0f}%' if p.raw_paired else '-'} |")
    lines.append("")
    for name, by_batch in raw.items():
        best_batch = max(by_batch, key=lambda b: by_batch[b])
        row = ", ".join(f"b{b}: {v:.0f}" for b, v in by_batch.items())
        lines.append(f"raw ONNX Runtime {name}: best {by_batch[best_batch]:.0f} items/s at batch {best_batch} ({row})")
    return "\n".join(lines)


def speed(args: argparse.Namespace) -> None:
    from nets import build  # torch, only for building the bench models

    repo = HERE / ".repo"
    build(repo)
    seconds, repeats = (4.0, 1) if args.quick else (args.seconds, args.repeats)
    print("raw ONNX Runtime (in process):", flush=True)
    raw = {
        "small": raw_items_per_s(repo / "small/1/model.onnx", (1, 28, 28), [1, 8, 16, 32, 64], 2.0),
        "resnet18": raw_items_per_s(repo / "resnet18/1/model.onnx", (3, 224, 224), [1, 4, 8, 16], 4.0),
    }
    for name, by_batch in raw.items():
        print(f"  {name}: " + ", ".join(f"batch {b}: {v:.0f} items/s" for b, v in by_batch.items()), flush=True)
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as logs, run_server(repo, log_dir=Path(logs),
                                                           env={"DEEPSERVE_LOG_LEVEL": "WARNING"}) as server:
        print(f"server {server.url} (pid {server.process.pid}):", flush=True)
        for model in ("small", "small_nobatch"):
            points += measure(server.url, model, "json", (1, 28, 28), args.concurrency, repeats, seconds)
        best = max(raw["resnet18"], key=lambda b: raw["resnet18"][b])

        def resnet_raw() -> float:
            return raw_items_per_s(repo / "resnet18/1/model.onnx", (3, 224, 224), [best], seconds)[best]

        for model in ("resnet18", "resnet18_nobatch"):
            points += measure(server.url, model, "binary", (3, 224, 224), [c for c in args.concurrency if c > 1],
                              repeats, seconds, raw=resnet_raw)
    report = table(points, raw)
    print("\n" + report)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "speed.md").write_text(report + "\n")
    (out / "speed.json").write_text(json.dumps({"points": [asdict(p) for p in points], "raw": raw}, indent=2))


def memory(args: argparse.Namespace) -> None:
    repo = Path(args.rss)
    with tempfile.TemporaryDirectory() as logs, run_server(repo, log_dir=Path(logs),
                                                           env={"DEEPSERVE_LOG_LEVEL": "WARNING"}) as server:
        time.sleep(2)
        idle = rss_mib(server.process.pid)
        models = sorted({p.parent.parent.name for p in repo.glob("*/*/model.onnx")})
        print(f"idle RSS with {len(models)} models of {repo} loaded ({', '.join(models)}): {idle:.0f} MiB", flush=True)
        result: dict[str, object] = {"models": models, "idle_rss_mib": idle}
        if args.soak:
            meta = json.loads(urllib.request.urlopen(f"{server.url}/v2/models/{args.soak_model}").read())
            spec = meta["inputs"][0]
            shape = tuple(abs(d) for d in spec["shape"][1:])  # one item
            body = json_body(shape, spec["name"])
            target = f"{server.url}/v2/models/{args.soak_model}/infer"
            samples: dict[int, float] = {}
            errors = 0
            start = time.monotonic()
            for minute in range(1, int(args.soak // 60) + 1):
                *_, failed = wrk(target, body, concurrency=32, seconds=max(1, start + 60 * minute - time.monotonic()))
                errors += failed
                samples[minute] = rss_mib(server.process.pid)
                print(f"  RSS after {minute} min of load on {args.soak_model}: {samples[minute]:.0f} MiB "
                      f"(failed requests so far: {errors})", flush=True)
            result.update(soak_model=args.soak_model, soak_rss_mib=samples, soak_errors=errors)
            if 1 in samples and len(samples) > 1:
                growth = 100 * (samples[max(samples)] / samples[1] - 1)
                result["growth_pct"] = growth
                print(f"RSS growth from minute 1 to {max(samples)}: {growth:+.1f}%")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat x 4 s per point")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (the median is reported)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rss", metavar="REPO", help="measure the server's RSS serving REPO instead of speed")
    parser.add_argument("--soak", type=float, default=0, help="with --rss: seconds of load (wrk, c=32)")
    parser.add_argument("--soak-model", default="mlp", help="with --soak: model in REPO to load (1x28x28 input)")
    args = parser.parse_args()
    memory(args) if args.rss else speed(args)


if __name__ == "__main__":
    main()
