"""The `gan` family: a conditional DCGAN that draws a digit of a requested class, judged by the cnn.

The generator and a projection discriminator (models/nets/gan.py) train with the hinge loss on real
handwriting plus font-rendered digits (the image families' train data); the published generator is an
exponential moving average of the trained one. Exported: noise `z` [N, d] and class `label` [N] in,
`image` [N, 1, 28, 28] in [0, 1] (light on dark) out.

Held-out figures, with the cnn classifier as the judge (the repository's published `cnn` when the
build has one, else a cnn trained here with the cnn recipe's settings):
- agreement: the share of generated digits per class that the judge classifies as the requested class;
- Fréchet distance between the judge's penultimate-layer features of generated digits and of the
  held-out real digits, against the same distance for a baseline (per-class mean image plus Gaussian
  noise with the class's per-pixel std);
- diversity: mean pairwise pixel distance within a class, generated vs held-out real.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import helper
from scipy import linalg

from models.data.images import SIZE, ImageData, digits
from models.export import export_onnx
from models.nets.cnn import Cnn, CnnConfig
from models.nets.gan import Discriminator, GanConfig, Generator
from models.publish import publish
from models.recipes.base import BuildOptions, FamilyResult
from models.recipes.images import CNN
from models.train import seed_everything
from models.verify import check_parity
from service.repository.config import (
    ImageClassificationTask,
    ImageGenerationTask,
    ModelConfig,
    TensorSpec,
    load_config,
)

logger = logging.getLogger(__name__)

INPUTS, OUTPUT = ["z", "label"], "image"
OPSET = 17
PARITY_ATOL = 1e-4


@dataclass(frozen=True, slots=True)
class GanTrain:
    epochs: int
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    aux: float = 1.0
    """Weight of the auxiliary classifier loss (AC-GAN) for both networks."""
    ema: float = 0.999
    """Decay of the generator's moving average (the published weights), reached after a warm-up:
    step t uses min(ema, (1 + t) / (10 + t)), so early steps are not averaged with the random start."""
    fonts_per_class: int = 200
    per_class: int = 1000
    """Generated digits per class for the agreement figure."""
    fid_count: int = 2000
    """Generated (and baseline) digits for the Fréchet distance."""


# Sized for a few minutes on 2 CPU cores: 40 epochs of 3,347 images = 2,080 steps of 64 at ~0.14 s of
# CPU each (one thread; the critic's convolutions dominate, so g_width 64 costs ~15% more than 32). The
# full build (seed 0) reached cnn agreement 0.978 (worst class 0.943) and a Fréchet ratio of 0.07; the
# 12 epochs (~430 steps) of g_width 32 and EMA 0.99 before gave 0.861 (worst 0.447) and 0.43. The quick
# build takes ~220 steps, where class conditioning has appeared (agreement 0.97 on its 100 per class).
FULL = GanTrain(epochs=40, fonts_per_class=200)
QUICK = GanTrain(epochs=9, fonts_per_class=20, per_class=100, fid_count=500)
NET = GanConfig(noise_dim=32, classes=10, embed_dim=16, g_width=64, d_width=32)


# ---- the judge -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Judge:
    """A classifier ONNX graph that also returns its penultimate layer (the input of its last Gemm/MatMul)."""

    session: ort.InferenceSession
    mean: float
    std: float
    source: str

    @classmethod
    def from_onnx(cls, path: Path, *, mean: float, std: float, source: str) -> Judge:
        model = onnx.load(str(path))
        last = next(n for n in reversed(model.graph.node) if n.output[0] == model.graph.output[0].name)
        if last.op_type not in ("Gemm", "MatMul"):
            raise ValueError(
                f"judge {source}: its last node is {last.op_type}, not a linear head (Gemm/MatMul)"
            )
        model.graph.output.append(helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return cls(session=session, mean=mean, std=std, source=source)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1, 28, 28) in [0, 1], light on dark -> (logits (N, classes), features (N, D))."""
        name = self.session.get_inputs()[0].name
        logits, feats = [], []
        for i in range(0, len(images), 512):
            x = ((images[i: i + 512] - self.mean) / self.std).astype(np.float32)
            out = self.session.run(None, {name: x})
            logits.append(out[0])
            feats.append(out[-1].reshape(len(x), -1))
        return np.concatenate(logits), np.concatenate(feats).astype(np.float64)


def find_judge(repo: Path) -> tuple[Path, float, float] | None:
    """The newest published `cnn` in `repo`: (model.onnx, mean, std), or None."""
    folder = repo / "cnn"
    found = folder.glob("*") if folder.is_dir() else iter(())
    versions = sorted((int(p.name) for p in found if p.name.isdigit() and (p / "model.onnx").is_file()),
                      reverse=True)
    if not versions or not (folder / "config.yaml").is_file():
        return None
    task = load_config(folder / "config.yaml").task
    if not isinstance(task, ImageClassificationTask):
        return None
    return folder / str(versions[0]) / "model.onnx", task.mean[0], task.std[0]


def train_judge(opts: BuildOptions, tmp: Path) -> Judge:
    """A cnn trained with the cnn recipe's settings (not published), for builds without one."""
    sub = BuildOptions(out=tmp / "judge-repo", quick=opts.quick, seed=opts.seed, device=opts.device,
                       progress=opts.progress)
    CNN.build(sub)
    found = find_judge(sub.out)
    assert found is not None
    path, mean, std = found
    kind = "quick" if opts.quick else "full"
    return Judge.from_onnx(path, mean=mean, std=std, source=f"cnn trained in this build ({kind})")


# ---- figures -------------------------------------------------------------------------------------


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # rank-deficient covariances (fewer samples than features): handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = np.eye(len(cov_a)) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance between distinct rows of x (N, D)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    sq = (flat**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
    n = len(flat)
    return float(np.sqrt(d2)[~np.eye(n, dtype=bool)].mean()) if n > 1 else 0.0


def generate(net: Generator, labels: np.ndarray, seed: int, noise_dim: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(rng.standard_normal((len(labels), noise_dim)).astype(np.float32))
    with torch.no_grad():
        chunks = zip(z.split(500), torch.from_numpy(labels).split(500), strict=True)
        return torch.cat([net(zc, yc) for zc, yc in chunks]).numpy()


def baseline(data: ImageData, labels: np.ndarray, seed: int) -> np.ndarray:
    """Per-class mean training image plus Gaussian noise with the class's per-pixel std, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    x, y = data.train_x.numpy(), data.train_y.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    stds = np.stack([x[y == c].std(0) for c in range(10)])
    noise = rng.standard_normal((len(labels), *x.shape[1:])) * stds[labels]
    return np.clip(means[labels] + noise, 0, 1).astype(np.float32)


def gan_metrics(net: Generator, judge: Judge, data: ImageData, train: GanTrain,
                seed: int) -> dict[str, float]:
    classes = 10
    per_class_labels = np.repeat(np.arange(classes), train.per_class)
    logits, _ = judge(generate(net, per_class_labels, seed + 1000, NET.noise_dim))
    agree = logits.argmax(1) == per_class_labels
    per_class = [float(agree[per_class_labels == c].mean()) for c in range(classes)]
    fid_labels = np.arange(train.fid_count) % classes
    fake = generate(net, fid_labels, seed + 2000, NET.noise_dim)
    base = baseline(data, fid_labels, seed + 3000)
    real = data.test_x.numpy()
    _, f_real = judge(real)
    _, f_fake = judge(fake)
    base_logits, f_base = judge(base)
    fid, fid_base = frechet_distance(f_fake, f_real), frechet_distance(f_base, f_real)
    real_y = data.test_y.numpy()
    div_fake = float(np.mean([mean_pairwise_distance(fake[fid_labels == c]) for c in range(classes)]))
    div_real = float(np.mean([mean_pairwise_distance(real[real_y == c]) for c in range(classes)]))
    div_base = float(np.mean([mean_pairwise_distance(base[fid_labels == c]) for c in range(classes)]))
    metrics = {
        "cnn_agreement": float(agree.mean()),
        "cnn_agreement_min_class": min(per_class),
        "baseline_cnn_agreement": float((base_logits.argmax(1) == fid_labels).mean()),
        "frechet": fid,
        "baseline_frechet": fid_base,
        "frechet_ratio": fid / fid_base,
        "diversity": div_fake,
        "diversity_real": div_real,
        "diversity_baseline": div_base,
        "diversity_ratio": div_fake / div_real,
        "heldout_size": float(len(real)),
    }
    rounded = {k: round(v, 4) for k, v in metrics.items()}
    return rounded | {f"agreement_{c}": round(v, 4) for c, v in enumerate(per_class)}


# ---- training ------------------------------------------------------------------------------------


def train_gan(data: ImageData, train: GanTrain, *, seed: int, device: str,
              progress: bool) -> tuple[Generator, list[dict[str, float]]]:
    """Hinge-loss conditional GAN; returns the moving-average generator (eval mode, cpu) and per-epoch
    losses."""
    g, d = Generator(NET).to(device), Discriminator(NET).to(device)
    ema = copy.deepcopy(g).eval()
    opt_g = torch.optim.Adam(g.parameters(), lr=train.lr, betas=train.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=train.lr, betas=train.betas)
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    generator = torch.Generator().manual_seed(seed)
    history = []
    steps = len(x_all) // train.batch_size
    done = 0
    for epoch in range(1, train.epochs + 1):
        g.train()
        order = torch.randperm(len(x_all), generator=generator)
        sums = {"loss_d": 0.0, "loss_g": 0.0}
        for step in range(steps):
            idx = order[step * train.batch_size: (step + 1) * train.batch_size]
            real, label = x_all[idx], y_all[idx]
            z = torch.randn(len(idx), NET.noise_dim, generator=generator).to(device)
            fake_label = torch.randint(0, NET.classes, (len(idx),), generator=generator).to(device)
            fake = g(z, fake_label)
            real_score, real_logits = d(real, label)
            fake_score, _ = d(fake.detach(), fake_label)
            loss_d = (torch.relu(1 - real_score).mean() + torch.relu(1 + fake_score).mean()
                      + train.aux * F.cross_entropy(real_logits, label))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            fake_score, fake_logits = d(fake, fake_label)
            loss_g = -fake_score.mean() + train.aux * F.cross_entropy(fake_logits, fake_label)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            done += 1
            decay = min(train.ema, (1 + done) / (10 + done))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), g.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
                for be, b in zip(ema.buffers(), g.buffers(), strict=True):
                    be.copy_(b)
            sums["loss_d"] += float(loss_d.detach())
            sums["loss_g"] += float(loss_g.detach())
        entry = {"epoch": float(epoch), **{k: v / max(steps, 1) for k, v in sums.items()}}
        history.append(entry)
        if progress:
            logger.info("gan epoch %d/%d  loss_d=%.4f  loss_g=%.4f", epoch, train.epochs, entry["loss_d"],
                        entry["loss_g"])
    return ema.cpu().eval(), history


@dataclass(slots=True)
class GanRecipe:
    name: str = "gan"
    description: str = (
        "Conditional DCGAN generator: noise z (32) and a digit class in, a 28x28 digit (light on dark) out."
    )

    def build(self, opts: BuildOptions) -> FamilyResult:
        start = time.perf_counter()
        seed_everything(opts.seed)
        if opts.data is not None:
            raise ValueError("the gan family builds from the built-in digits only (--data is not supported)")
        train = QUICK if opts.quick else FULL
        if opts.epochs is not None:
            train = GanTrain(**{**asdict(train), "epochs": opts.epochs})
        data = digits(seed=opts.seed, fonts_per_class=train.fonts_per_class)
        train_start = time.perf_counter()
        net, history = train_gan(data, train, seed=opts.seed, device=opts.device, progress=opts.progress)
        train_seconds = time.perf_counter() - train_start
        with tempfile.TemporaryDirectory(prefix="deepserve-gan-") as tmp:
            found = find_judge(opts.out)
            if found is not None:
                path, mean, std = found
                judge = Judge.from_onnx(path, mean=mean, std=std, source=f"published cnn {path}")
            else:
                judge = train_judge(opts, Path(tmp))
            logger.info("gan judge: %s", judge.source)
            metrics = gan_metrics(net, judge, data, train, opts.seed)
            onnx_path = Path(tmp) / "model.onnx"
            noise = np.random.default_rng(opts.seed).standard_normal((8, NET.noise_dim))
            z = torch.from_numpy(noise.astype(np.float32))
            y = torch.arange(8, dtype=torch.int64) % NET.classes
            export_onnx(net, (z[:2], y[:2]), onnx_path, input_names=INPUTS, output_names=[OUTPUT],
                        dynamic_axes={"z": {0: "batch"}, "label": {0: "batch"}, OUTPUT: {0: "batch"}},
                        opset=OPSET)
            parity = check_parity(net, onnx_path, {"batch1": (z[:1], y[:1]), "batch8": (z, y)},
                                  input_names=INPUTS, atol=PARITY_ATOL)
            provenance = {
                "family": self.name,
                "data": data.source,
                "seed": opts.seed,
                "quick": opts.quick,
                "train": asdict(train),
                "net": asdict(NET),
                "judge": judge.source,
                "train_seconds": round(train_seconds, 2),
                "metrics": metrics,
                "final_losses": history[-1] if history else None,
                "parity": parity,
                "parity_atol": PARITY_ATOL,
                "parameters": sum(p.numel() for p in net.parameters()),
            }
            path = publish(repo=opts.out, name=self.name, version=opts.version, onnx_file=onnx_path,
                           config=self._config(data.labels), provenance=provenance)
        return FamilyResult(name=self.name, metrics=metrics, parity=parity, path=path,
                            seconds=time.perf_counter() - start, net=net)

    def _config(self, labels: list[str]) -> ModelConfig:
        return ModelConfig(
            description=self.description,
            inputs=[TensorSpec(name="z", datatype="FP32", shape=[-1, NET.noise_dim]),
                    TensorSpec(name="label", datatype="INT64", shape=[-1])],
            outputs=[TensorSpec(name=OUTPUT, datatype="FP32", shape=[-1, 1, SIZE, SIZE])],
            max_batch_size=64,
            max_queue_delay_ms=2.0,
            labels=labels,
            task=ImageGenerationTask(noise_input="z", noise_dim=NET.noise_dim, label_input="label",
                                     labels=labels, output=OUTPUT, value_range=(0.0, 1.0), max_count=64),
        )


RECIPES = (GanRecipe(),)
__all__ = ["RECIPES", "Cnn", "CnnConfig", "GanRecipe", "Judge", "frechet_distance", "gan_metrics",
           "train_gan"]
