"""A trainer with nothing model-specific (minGPT `mingpt/trainer.py` style).

`fit` runs AdamW with a learning-rate schedule over a DataLoader; the caller supplies the loss (and any
batch metrics such as accuracy) through `loss_fn` and the held-out evaluation through `evaluate`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

LossFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module], dict[str, float]]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Needed by deterministic cuBLAS; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass(slots=True)
class TrainConfig:
    """Optimiser and schedule for one `fit`."""

    epochs: int
    batch_size: int
    lr: float
    """Peak learning rate (onecycle) or initial one (cosine, constant)."""
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; None: no clipping."""
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.25
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    return None


def _to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def fit(
    net: nn.Module,
    train: DataLoader[Any],
    *,
    cfg: TrainConfig,
    loss_fn: LossFn,
    evaluate: EvalFn | None = None,
    desc: str = "",
    progress: bool = True,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """Train `net` in place; one history entry per epoch (mean train loss/metrics + `evaluate` output).

    `loss_fn(net, batch)` returns the loss to minimise and batch metrics to show (e.g. {"acc": 0.9});
    batches are moved to `device` first. `evaluate(net)` is called with the net in eval mode.
    """
    net.to(device)
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    sched = _scheduler(opt, cfg, cfg.epochs * len(train))
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(
            train,
            desc=f"{desc} {epoch}/{cfg.epochs}".strip(),
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for batch in bar:
            loss, stats = loss_fn(net, _to_device(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            count += 1
            for key, value in {"loss": float(loss.detach()), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in sums.items()}, refresh=False)
        entry = {"epoch": float(epoch), **{k: v / max(count, 1) for k, v in sums.items()}}
        if evaluate is not None:
            net.eval()
            with torch.no_grad():
                entry.update({f"val_{k}": v for k, v in evaluate(net).items()})
        history.append(entry)
        if progress:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "epoch")
            tqdm.write(f"{desc} epoch {epoch}/{cfg.epochs}  {shown}".strip())
    net.eval()
    return history
