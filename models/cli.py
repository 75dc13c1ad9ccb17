"""`deepserve-train`: build model families into a model repository, or list them.

    deepserve-train build --out model_repository [cnn mlp text speech] [--quick] [--epochs N]
                          [--seed S] [--device cpu] [--data PATH] [--version V] [--threads N]
    deepserve-train list
    deepserve-train quantize --repo REPO [cnn mlp text speech]  INT8 variants <name>-int8 (models/quantize.py)

Every requested family is built even when one fails; the exit code is 1 if any failed (parity,
export, training errors), 2 for bad usage (unknown family, family modules that failed to import).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.recipes import FAMILY_MODULES, import_errors, load_recipes
from models.recipes.base import BuildOptions, FamilyResult

logger = logging.getLogger("models.cli")

_FIRST_METRICS = ("accuracy", "macro_f1", "wer", "cer", "baseline_accuracy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepserve-train", description="Train, export, verify and publish demo models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build families into a model repository")
    build.add_argument("families", nargs="*", help="families to build (default: all; see `list`)")
    build.add_argument("--out", type=Path, required=True, help="model repository root")
    build.add_argument("--quick", action="store_true", help="tiny data and few epochs (tests, CI)")
    build.add_argument("--epochs", type=int, default=None, help="override each family's epochs")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    build.add_argument("--data", type=Path, default=None, help="your own data instead of the built-in data")
    build.add_argument("--version", type=int, default=1, help="version folder to publish (default 1)")
    build.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    build.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    sub.add_parser("list", help="list the families and any that failed to import")
    quant = sub.add_parser(
        "quantize", help="publish INT8 variants <name>-int8 of built models (models/quantize.py)"
    )
    quant.add_argument("models", nargs="*", default=["cnn", "mlp", "text"],
                       help="models in the repository: cnn, mlp, text (default), speech (no faster in INT8)")
    quant.add_argument("--repo", type=Path, required=True, help="model repository root (written to)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=False)
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the metrics table into 80 columns
        console = Console(stderr=False, width=200)
    if args.command == "list":
        return _list(console)
    if args.command == "quantize":
        return _quantize(args, console)
    return _build(args, console)


def _list(console: Console) -> int:
    recipes = load_recipes()
    table = Table(title="model families")
    table.add_column("family")
    table.add_column("description")
    for name, recipe in recipes.items():
        table.add_row(name, recipe.description)
    console.print(table)
    for module, error in import_errors().items():
        console.print(f"[red]{module} failed to import:[/red] {error}")
    return 0 if not import_errors() else 1


def _build(args: argparse.Namespace, console: Console) -> int:
    recipes = load_recipes()
    errors = import_errors()
    # opt-in families (in_default_build = False, e.g. minilm) are built only when named
    wanted = list(dict.fromkeys(args.families)) or [
        name for name, recipe in recipes.items() if getattr(recipe, "in_default_build", True)
    ]
    unknown = [f for f in wanted if f not in recipes]
    if unknown:
        broken = "".join(f"\n  {m} failed to import: {e}" for m, e in errors.items())
        console.print(f"[red]unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}[/red]; "
                      f"known: {', '.join(recipes) or 'none'} (modules: {', '.join(FAMILY_MODULES)}){broken}")
        return 2
    if not wanted:
        console.print(f"[red]no family could be imported[/red]: {errors}")
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results: list[FamilyResult] = []
    failures: dict[str, str] = {}
    for name in wanted:
        opts = BuildOptions(
            out=args.out, quick=args.quick, epochs=args.epochs, seed=args.seed, device=args.device,
            data=args.data, version=args.version, progress=args.progress,
        )
        console.rule(f"[bold]{name}")
        try:
            results.append(recipes[name].build(opts))
        except Exception as exc:  # keep building the other families; report at the end
            logger.debug("family %s failed", name, exc_info=True)
            console.print(f"[red]{name} failed:[/red] {type(exc).__name__}: {exc}")
            console.print(traceback.format_exc(), markup=False, highlight=False)
            failures[name] = f"{type(exc).__name__}: {exc}"
    console.print(_table(results, failures))
    if failures:
        console.print(f"[red]{len(failures)} of {len(wanted)} families failed: {', '.join(failures)}[/red]")
    return 1 if failures else 0


def _quantize(args: argparse.Namespace, console: Console) -> int:
    from models.quantize import quantize_model

    table = Table(title="INT8 vs FP32 (held-out accuracy, or WER for speech; speed: items/s ratio "
                  "INT8/FP32, 1 thread, same run)")
    for column in ["model", "method", "fp32", "int8", "agreement", "size", "speed b1", "speed b32"]:
        table.add_column(column)
    failed = 0
    for name in args.models:
        try:
            r = quantize_model(args.repo, name)
        except Exception as exc:  # keep going; report at the end
            console.print(f"[red]{name} failed:[/red] {type(exc).__name__}: {exc}")
            failed += 1
            continue
        f = r.figures
        held = ("fp32_wer", "int8_wer", "WER ") if "fp32_wer" in f else ("fp32_accuracy", "int8_accuracy", "")
        table.add_row(name, r.method, f"{held[2]}{f[held[0]]:.4f}", f"{held[2]}{f[held[1]]:.4f}",
                      f"{f['argmax_agreement']:.2%}", f"{f['size_ratio']:.2f}x", f"{f['ratio_b1']:.2f}x",
                      f"{f['ratio_b32']:.2f}x")
    console.print(table)
    return 1 if failed else 0


def _table(results: list[FamilyResult], failures: dict[str, str]) -> Table:
    keys = [k for k in _FIRST_METRICS if any(k in r.metrics for r in results)]
    keys += sorted({k for r in results for k in r.metrics} - set(keys) - {"heldout_size", "loss"})
    table = Table(title="held-out metrics")
    for column in ["model", *keys, "parity max|diff|", "seconds", "published"]:
        table.add_column(column, justify="left" if column in ("model", "published") else "right")
    for r in results:
        cells = [f"{r.metrics[k]:.4f}" if k in r.metrics else "" for k in keys]
        parity = max(r.parity.values(), default=float("nan"))
        table.add_row(r.name, *cells, f"{parity:.2e}", f"{r.seconds:.1f}", str(r.path))
    for name, reason in failures.items():
        table.add_row(f"[red]{name}[/red]", *["" for _ in keys], "", "", f"[red]FAILED: {reason[:80]}[/red]")
    return table


if __name__ == "__main__":
    sys.exit(main())
