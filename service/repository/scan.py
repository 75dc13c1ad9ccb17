"""Walk `REPO/<model>/<version>/model.onnx`, apply each model's version policy, derive configs.

Scanning only reads the disk: `ModelSpec.error` records why a version cannot be served (bad
config.yaml, missing model.onnx) so the registry shows it as not ready instead of crashing.
`derive_config` completes a config from the ONNX graph: tensors, datatypes, shapes, batching, labels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from service.repository.config import CONFIG_FILE, ModelConfig, TensorSpec, VersionPolicy, load_config
from service.runtime.session import tensor_spec

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
DEFAULT_MAX_BATCH_SIZE = 32
_VERSION = re.compile(r"[1-9][0-9]*", re.ASCII)


@dataclass(slots=True)
class ModelSpec:
    """One model version found on disk; `config` is None when the model has no (valid) config.yaml."""

    name: str
    version: int
    path: Path
    """The version's model.onnx (side files lie beside it)."""
    config: ModelConfig | None
    error: str | None
    """Why this version cannot be served, naming the file; None when it may be loaded."""
    served: bool = True
    """False for versions the version policy leaves out (listed only with include_unserved)."""


def scan(repo: Path, *, only: Sequence[str] | None = None, include_unserved: bool = False) -> list[ModelSpec]:
    """Every served model version under `repo` (only the models named in `only`, when given).

    Raises ValueError when `repo` is not a folder: the server cannot start without one.
    """
    if not repo.is_dir():
        raise ValueError(f"model repository {repo} is not a folder; set DEEPSERVE_MODEL_REPOSITORY")
    folders = {p.name: p for p in repo.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    if only is not None:
        for name in only:
            if name not in folders:
                logger.warning("model '%s' is not in the repository %s; skipped", name, repo)
        folders = {name: path for name, path in folders.items() if name in set(only)}
    specs: list[ModelSpec] = []
    for name in sorted(folders):
        specs.extend(scan_model(folders[name], include_unserved=include_unserved))
    return specs


def scan_model(folder: Path, *, include_unserved: bool = False) -> list[ModelSpec]:
    """The versions of one model folder, after its version policy."""
    config, error = _read_config(folder)
    versions: dict[int, Path] = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and _VERSION.fullmatch(child.name):
            versions[int(child.name)] = child
        elif child.is_dir():
            logger.info("model '%s': ignoring folder '%s' (version folders are positive integers)",
                        folder.name, child.name)
    if not versions:
        logger.warning(
            "model '%s' has no version folder (%s/<version>/%s); skipped", folder.name, folder, MODEL_FILE
        )
        return []
    policy = config.version_policy if config else VersionPolicy()
    served = set(select_versions(sorted(versions), policy, model=folder.name))
    specs = []
    for version in sorted(versions):
        if version not in served and not include_unserved:
            continue
        path = versions[version] / MODEL_FILE
        problem = error
        if problem is None and not path.is_file():
            problem = f"{path}: file not found; every version folder needs a {MODEL_FILE}"
        specs.append(ModelSpec(folder.name, version, path, config, problem, served=version in served))
    return specs


def _read_config(folder: Path) -> tuple[ModelConfig | None, str | None]:
    path = folder / CONFIG_FILE
    if not path.exists():
        return None, None
    try:
        config = load_config(path)
    except ValueError as exc:
        return None, str(exc)
    if config.name is not None and config.name != folder.name:
        return None, f"{path}: name '{config.name}' does not match the folder name '{folder.name}'"
    return config, None


def select_versions(available: Sequence[int], policy: VersionPolicy, *, model: str = "") -> list[int]:
    """The versions a policy serves, ascending. `available` must be sorted ascending."""
    if policy.policy == "all":
        return list(available)
    if policy.policy == "latest":
        return list(available[-policy.num_versions:])
    missing = sorted(set(policy.versions) - set(available))
    if missing:
        logger.warning("model '%s': version_policy names versions %s that are not on disk", model, missing)
    return sorted(set(policy.versions) & set(available))


def derive_config(onnx_path: Path, config: ModelConfig | None) -> ModelConfig:
    """The config a model is served with: `config` (or defaults) completed from the ONNX graph.

    Raises ValueError when the config contradicts the graph; ONNX Runtime errors for bad files.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    inputs = [tensor_spec(arg) for arg in session.get_inputs()]
    outputs = [tensor_spec(arg) for arg in session.get_outputs()]
    return complete_config(config, inputs=inputs, outputs=outputs, folder=onnx_path.parent)


def complete_config(
    config: ModelConfig | None, *, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], folder: Path
) -> ModelConfig:
    """`derive_config` for a graph already read (the registry passes its session's tensors)."""
    config = config or ModelConfig()
    merged_inputs = _merge(config.inputs, inputs, kind="input")
    merged_outputs = _merge(config.outputs, outputs, kind="output")
    fixed = [spec for spec in merged_inputs if not spec.shape or spec.shape[0] != -1]
    max_batch = config.max_batch_size
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH_SIZE if merged_inputs and not fixed else 0
    elif max_batch > 0 and fixed:
        raise ValueError(
            f"max_batch_size {max_batch} needs a dynamic first axis on every input, but input "
            f"'{fixed[0].name}' has shape {fixed[0].shape}; set max_batch_size: 0"
        )
    if max_batch and any(size > max_batch for size in config.preferred_batch_sizes):
        raise ValueError(
            f"preferred_batch_sizes {config.preferred_batch_sizes} exceed max_batch_size {max_batch}"
        )
    labels = config.labels or _read_labels(folder / LABELS_FILE)
    return config.model_copy(update={
        "inputs": merged_inputs, "outputs": merged_outputs, "max_batch_size": max_batch, "labels": labels,
    })


def _merge(given: Sequence[TensorSpec], graph: Sequence[TensorSpec], *, kind: str) -> list[TensorSpec]:
    """Graph tensors in graph order; config entries must agree with them and may pin dims or pad."""
    by_name = {spec.name: spec for spec in graph}
    overrides: dict[str, TensorSpec] = {}
    for spec in given:
        found = by_name.get(spec.name)
        if found is None:
            raise ValueError(
                f"config {kind} '{spec.name}' is not in the ONNX graph; its {kind}s are {list(by_name)}"
            )
        if spec.datatype != found.datatype:
            raise ValueError(
                f"config {kind} '{spec.name}' is {spec.datatype} but the ONNX graph has {found.datatype}"
            )
        if kind == "output" and spec.pad_value is not None:
            raise ValueError(f"config output '{spec.name}' sets pad_value; padding applies to inputs only")
        overrides[spec.name] = spec.model_copy(update={"shape": _merge_shape(spec, found, kind=kind)})
    return [overrides.get(spec.name, spec) for spec in graph]


def _merge_shape(spec: TensorSpec, found: TensorSpec, *, kind: str) -> list[int]:
    clash = len(spec.shape) != len(found.shape) or any(
        a >= 0 and b >= 0 and a != b for a, b in zip(spec.shape, found.shape, strict=False)
    )
    if clash:
        raise ValueError(
            f"config {kind} '{spec.name}' has shape {spec.shape} but the ONNX graph has {found.shape}"
        )
    return [b if b >= 0 else a for a, b in zip(spec.shape, found.shape, strict=True)]


def _read_labels(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read labels: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]
