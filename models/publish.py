"""Write one model version into the model repository, atomically.

Layout (docs/architecture.md): `REPO/<name>/<version>/{model.onnx, side files, provenance.json}` and
`REPO/<name>/config.yaml`. The version folder is assembled in a hidden temp folder beside it and renamed
into place, so a server scanning the repository never sees half a version; config.yaml is written
through `service.repository.config` (the server's own classes) to a temp file and `os.replace`d.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx

from service.repository.config import CONFIG_FILE, ModelConfig, dump_config

MODEL_FILE = "model.onnx"
PROVENANCE_FILE = "provenance.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_version() -> str:
    try:
        return importlib.metadata.version("deepserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_commit(where: Path | None = None) -> str:
    """HEAD of the git checkout holding this package (suffixed `-dirty` with local changes), or "unknown"."""
    cwd = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head or "unknown"


def _write_side_file(folder: Path, name: str, content: Path | bytes | str) -> None:
    target = folder / name
    if Path(name).name != name or name in (MODEL_FILE, PROVENANCE_FILE):
        raise ValueError(
            f"side file name {name!r} must be a plain file name other than {MODEL_FILE}/{PROVENANCE_FILE}"
        )
    if isinstance(content, Path):
        shutil.copyfile(content, target)
    elif isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content, encoding="utf-8")


def _swap_in(staged: Path, final: Path) -> None:
    """Rename `staged` to `final`, replacing an existing folder (moved aside first, then deleted)."""
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def publish(
    *,
    repo: Path,
    name: str,
    version: int,
    onnx_file: Path,
    config: ModelConfig,
    side_files: Mapping[str, Path | bytes | str] = {},  # noqa: B006 - read only
    provenance: Mapping[str, Any] = {},  # noqa: B006 - read only
) -> Path:
    """Publish `onnx_file` as `REPO/<name>/<version>/model.onnx` (+ side files) and write config.yaml.

    Provenance gains sha256 of model.onnx, opset, package version, git commit and creation time; it is
    stored in config.yaml (for the version just published) and as provenance.json in the version folder.
    Returns the version folder. An existing version folder is replaced.
    """
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    if config.name not in (None, name):
        raise ValueError(f"config.name {config.name!r} does not match model name {name!r}")
    model = onnx.load(str(onnx_file), load_external_data=False)
    facts: dict[str, Any] = {
        **provenance,
        "version": version,
        "sha256": sha256_of(onnx_file),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "package_version": package_version(),
        "git_commit": git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Round-trip through JSON so the YAML holds only plain types, and validate like the server does.
    final_config = ModelConfig.model_validate(
        {**config.model_dump(mode="json"), "name": name, "provenance": json.loads(json.dumps(facts))}
    )
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        shutil.copyfile(onnx_file, staged / MODEL_FILE)
        for file_name, content in side_files.items():
            _write_side_file(staged, file_name, content)
        (staged / PROVENANCE_FILE).write_text(
            json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        staged.chmod(0o755)
        _swap_in(staged, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    config_tmp = model_dir / f".{CONFIG_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        dump_config(final_config, config_tmp)
        os.replace(config_tmp, model_dir / CONFIG_FILE)
    finally:
        config_tmp.unlink(missing_ok=True)
    return model_dir / str(version)
