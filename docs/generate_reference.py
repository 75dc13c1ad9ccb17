"""Write docs/configuration.md from the docstrings of Settings, ModelConfig and the task sections.

    python docs/generate_reference.py          # rewrite the file
    python docs/generate_reference.py --check  # exit 1 if the file is stale (tests run this)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.repository import config as cfg  # noqa: E402
from service.settings import Settings  # noqa: E402

TARGET = ROOT / "docs" / "configuration.md"


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if hasattr(value, "__fspath__"):
        value = str(value)
    return f"`{value!r}`" if value not in (None, [], {}) else f"`{value}`"


def _table(model: type[BaseModel], env_prefix: str = "") -> list[str]:
    head = "| variable | type | default | meaning |" if env_prefix else "| field | type | default | meaning |"
    lines = [head, "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = f"`{env_prefix}{name.upper()}`" if env_prefix else f"`{name}`"
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| {key} | {_type(field.annotation)} | {_default(field)} | {doc} |")
    return lines


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the code by `python docs/generate_reference.py`; a test fails when it is stale.",
        "",
        "## Server settings",
        "",
        "Environment variables (or `deepserve serve` flags for the common ones). Lists are JSON,",
        "e.g. `DEEPSERVE_PROVIDERS='[\"CPUExecutionProvider\"]'`.",
        "",
        *_table(Settings, "DEEPSERVE_"),
        "",
        "## Model configuration (`REPO/<model>/config.yaml`)",
        "",
        "Every field is optional; unknown fields are an error that names the file.",
        "",
        *_table(cfg.ModelConfig),
        "",
        "### `inputs` / `outputs` entries",
        "",
        *_table(cfg.TensorSpec),
        "",
        "### `version_policy`",
        "",
        *_table(cfg.VersionPolicy),
    ]
    for task in (cfg.ImageClassificationTask, cfg.TextClassificationTask, cfg.SpeechRecognitionTask,
                 cfg.AudioClassificationTask, cfg.EmbeddingTask):
        kind = task.model_fields["type"].default
        out += ["", f"### `task: {{type: {kind}}}`", "", (task.__doc__ or "").strip(), "", *_table(task)]
    return "\n".join(out) + "\n"


def main() -> None:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            sys.exit(f"{TARGET} is stale: run python docs/generate_reference.py")
        return
    TARGET.write_text(text)


if __name__ == "__main__":
    main()
