"""The short soak: bench/soak.py for ~15 s against a real server on small task models (issue 10).

Mixed v2 JSON/binary and /v1 image, text and audio traffic, one bad input in ten (truncated files, wrong
types, huge dimensions, gzip bomb, truncated gzip, slow-drip and stalled bodies), a reload every 5 s and an
unload/load cycle: no 5xx, nothing lost or mismatched, every bad input refused with a 4xx JSON error.
The long version (30 min, RSS and file descriptors) is the same script; README has its figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from onnx_models import classifier_model, write_model
from server import free_port
from task_models import write_image_model, write_speech_model, write_text_model

ROOT = Path(__file__).resolve().parents[1]


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deepserve_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_short_soak_loses_nothing_and_answers_no_5xx(repo: Path, tmp_path: Path) -> None:
    write_model(repo, "clf", classifier_model())
    write_image_model(repo, "digits")
    write_text_model(repo, "sentiment")
    write_speech_model(repo, "speech")
    soak = load_soak()
    summary = soak.run(
        [
            "--repository", str(repo), "--duration", "15", "--concurrency", "8", "--settle", "5", "--port",
            str(free_port()), "--v2", "clf", "--image", "digits", "--text", "sentiment", "--audio", "speech",
            "--reload", "digits", "--reload-every", "4", "--cycle", "clf", "--cycle-every", "6",
            "--body-timeout", "8", "--log", str(tmp_path / "server.log"),
        ]
    )
    assert summary["5xx"] == {}, summary
    assert summary["lost"] == 0 and summary["mismatched"] == 0, summary
    assert summary["bad_inputs_not_refused"] == 0, summary
    assert summary["requests"] >= 40, summary
    assert {"v2_json", "v2_binary", "v1_image", "v1_text", "v1_audio"} <= set(summary["by_kind"]), summary
    chaos = summary["chaos"]
    assert chaos and all(key.endswith(": 200") for key in chaos), chaos
    assert any(key.startswith("reload digits") for key in chaos)
    assert any(key.startswith("unload clf") for key in chaos)
