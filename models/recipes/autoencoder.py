"""The `autoencoder` family: a convolutional autoencoder on the image families' digits, served as an
anomaly detector.

It trains on real handwriting (scikit-learn's digits, part of the train split) plus font-rendered
digits, reconstructing each image (MSE). The anomaly threshold is the (1 - FPR) quantile of the
reconstruction error of held-out *normal* images that were never trained on (the rest of the real
train split: the calibration set). The held-out evaluation scores the 450 held-out real digits
against out-of-distribution sets made here and never trained on (models/data/images.py `ood_sets`:
letters, random strokes, noise, inverted digits, blank pages): AUROC overall and per set, and the
measured false-positive and detection rates at the threshold.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from models.data.images import OOD_SETS, SIZE, digits, ood_sets
from models.export import export_onnx
from models.nets.autoencoder import Autoencoder, AutoencoderConfig
from models.publish import publish
from models.recipes.base import BuildOptions, FamilyResult
from models.recipes.images import Augment
from models.train import TrainConfig, fit, seed_everything
from models.verify import check_parity
from service.repository.config import AnomalyDetectionTask, ModelConfig, TensorSpec

logger = logging.getLogger(__name__)

INPUT, OUTPUT = "image", "reconstruction"
OPSET = 17
PARITY_ATOL = 1e-4
FALSE_POSITIVE_RATE = 0.01
"""Share of normal images allowed above the threshold."""
CALIBRATION_FRACTION = 0.3
"""Share of the real train split kept out of training to calibrate the threshold."""


@dataclass(frozen=True, slots=True)
class Sizes:
    train: TrainConfig
    fonts_per_class: int
    real_fraction: float


FULL = Sizes(TrainConfig(epochs=30, batch_size=64, lr=3e-3, weight_decay=1e-5, schedule="onecycle"), 100, 1.0)
QUICK = Sizes(TrainConfig(epochs=6, batch_size=64, lr=5e-3, weight_decay=1e-5, schedule="onecycle"), 10, 1.0)
NET = AutoencoderConfig(widths=(16, 32), latent=16, bias=False)


def scores(net: nn.Module, x: Tensor) -> np.ndarray:
    """Per-image mean squared reconstruction error, as the server computes it (task.score = mse)."""
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(chunk) for chunk in x.split(512)])
    return ((out - x) ** 2).mean(dim=(1, 2, 3)).numpy().astype(np.float64)


def calibrate(normal_scores: np.ndarray, fpr: float) -> float:
    """The smallest threshold with at most `fpr` of `normal_scores` above it."""
    return float(np.quantile(normal_scores, 1.0 - fpr, method="higher"))


def anomaly_metrics(normal: np.ndarray, ood: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """AUROC overall and per OOD set, false-positive rate on `normal` and detection rate per set."""
    everything = np.concatenate(list(ood.values()))
    labels = np.r_[np.zeros(len(normal)), np.ones(len(everything))]
    metrics = {
        "auroc": float(roc_auc_score(labels, np.r_[normal, everything])),
        "fpr_at_threshold": float((normal > threshold).mean()),
        "tpr_at_threshold": float((everything > threshold).mean()),
    }
    for name, values in ood.items():
        truth = np.r_[np.zeros(len(normal)), np.ones(len(values))]
        metrics[f"auroc_{name}"] = float(roc_auc_score(truth, np.r_[normal, values]))
        metrics[f"tpr_{name}"] = float((values > threshold).mean())
    return {k: round(v, 4) for k, v in metrics.items()}


@dataclass(slots=True)
class AutoencoderRecipe:
    name: str = "autoencoder"
    description: str = (
        "Convolutional autoencoder on 28x28 digits (light on dark); reconstruction error flags images unlike "
        "handwritten digits."
    )

    def build(self, opts: BuildOptions) -> FamilyResult:
        start = time.perf_counter()
        seed_everything(opts.seed)
        sizes = QUICK if opts.quick else FULL
        if opts.data is not None:
            raise ValueError(
                "the autoencoder family builds from the built-in digits only (--data is not supported)"
            )
        data = digits(seed=opts.seed, fonts_per_class=sizes.fonts_per_class,
                      real_fraction=sizes.real_fraction)
        real = int(data.source["real_train"])
        order = np.random.default_rng(opts.seed).permutation(real)
        calibration_idx = order[: int(real * CALIBRATION_FRACTION)]
        keep = np.r_[order[int(real * CALIBRATION_FRACTION):], np.arange(real, len(data.train_y))]
        train_x = data.train_x[torch.as_tensor(keep)]
        calibration_x = data.train_x[torch.as_tensor(calibration_idx)]
        cfg = sizes.train
        if opts.epochs is not None:
            cfg = TrainConfig(**{**asdict(cfg), "epochs": opts.epochs})
        net = Autoencoder(NET)
        augment = Augment(generator=torch.Generator().manual_seed(opts.seed + 1), degrees=8.0, shear=0.1,
                          scale=(0.85, 1.1), shift=0.1)
        train_start = time.perf_counter()
        history = self._fit(net, train_x, data.test_x, cfg=cfg, opts=opts, augment=augment)
        train_seconds = time.perf_counter() - train_start
        net = net.cpu().eval()

        threshold = calibrate(scores(net, calibration_x), FALSE_POSITIVE_RATE)
        normal = data.test_x
        made = ood_sets(normal=normal.squeeze(1).numpy(), seed=opts.seed)
        ood = {k: torch.from_numpy(v).unsqueeze(1) for k, v in made.items()}
        ood_scores = {k: scores(net, v) for k, v in ood.items()}
        metrics: dict[str, float] = anomaly_metrics(scores(net, normal), ood_scores, threshold)
        metrics["threshold"] = round(threshold, 6)
        metrics["heldout_size"] = float(len(normal))
        with tempfile.TemporaryDirectory(prefix="deepserve-autoencoder-") as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(net, (normal[:2],), onnx_path, input_names=[INPUT], output_names=[OUTPUT],
                        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset=OPSET)
            cases = {"batch1": (normal[:1],), "batch8": (torch.cat([normal[:4], ood["letters"][:4]]),)}
            parity = check_parity(net, onnx_path, cases, input_names=[INPUT], atol=PARITY_ATOL)
            provenance = {
                "family": self.name,
                "data": {**data.source,
                         "calibration": f"{len(calibration_x)} real train-split digits kept out of training",
                         "ood_sets": {k: f"{len(v)} images" for k, v in ood.items()}},
                "seed": opts.seed,
                "quick": opts.quick,
                "train": asdict(cfg),
                "net": asdict(NET),
                "train_seconds": round(train_seconds, 2),
                "metrics": metrics,
                "final_train_loss": round(history[-1].get("loss", float("nan")), 6) if history else None,
                "parity": parity,
                "parity_atol": PARITY_ATOL,
                "parameters": sum(p.numel() for p in net.parameters()),
            }
            path = publish(repo=opts.out, name=self.name, version=opts.version, onnx_file=onnx_path,
                           config=self._config(threshold, len(calibration_x)), provenance=provenance)
        return FamilyResult(name=self.name, metrics=metrics, parity=parity, path=path,
                            seconds=time.perf_counter() - start, net=net)

    def _fit(self, net: nn.Module, train_x: Tensor, test_x: Tensor, *, cfg: TrainConfig, opts: BuildOptions,
             augment: Augment) -> list[dict[str, float]]:
        def collate(items: list[tuple[Tensor]]) -> Tensor:
            return augment(torch.stack([i[0] for i in items]))

        def loss_fn(model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
            return F.mse_loss(model(batch), batch), {}

        held = test_x.to(opts.device)

        def heldout(model: nn.Module) -> dict[str, float]:
            return {"mse": float(F.mse_loss(model(held), held))}

        loader = DataLoader(TensorDataset(train_x), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            collate_fn=collate, generator=torch.Generator().manual_seed(opts.seed))
        return fit(net, loader, cfg=cfg, loss_fn=loss_fn, evaluate=heldout, desc=self.name,
                   progress=opts.progress, device=opts.device)

    def _config(self, threshold: float, calibration_size: int) -> ModelConfig:
        shape = [-1, 1, SIZE, SIZE]
        return ModelConfig(
            description=self.description,
            inputs=[TensorSpec(name=INPUT, datatype="FP32", shape=shape)],
            outputs=[TensorSpec(name=OUTPUT, datatype="FP32", shape=shape)],
            max_batch_size=64,
            max_queue_delay_ms=2.0,
            task=AnomalyDetectionTask(
                input=INPUT, output=OUTPUT, size=(SIZE, SIZE), channels="L", resize="pad",
                # fixed polarity: a light-on-dark upload is the "inverted digits" anomaly, not a digit
                invert=True, autocontrast=True, threshold=threshold, score="mse",
                false_positive_rate=FALSE_POSITIVE_RATE, calibration_size=calibration_size,
            ),
        )


RECIPES = (AutoencoderRecipe(),)
__all__ = ["OOD_SETS", "RECIPES", "AutoencoderRecipe", "anomaly_metrics", "calibrate", "scores"]
