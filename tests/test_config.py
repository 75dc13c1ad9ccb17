"""ModelConfig and Settings: what config.yaml and DEEPSERVE_* may say, and the errors when they are wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.repository.config import (
    ImageClassificationTask,
    ModelConfig,
    SpeechRecognitionTask,
    TensorSpec,
    dump_config,
    load_config,
)
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_full_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = ModelConfig(
        inputs=[TensorSpec(name="image", datatype="FP32", shape=[-1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
        max_batch_size=64,
        preferred_batch_sizes=[8, 64],
        task=ImageClassificationTask(input="image", output="logits", size=(28, 28), channels="L"),
        provenance={"sha256": "ab" * 32, "metrics": {"accuracy": 0.99}},
    )
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    assert "type: image-classification" in path.read_text()  # the discriminator survives exclude_defaults
    assert load_config(path) == config


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    config = load_config(path)
    assert config.max_batch_size is None and config.task is None and config.version_policy.policy == "latest"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("max_batch_sise: 8\n", ["max_batch_sise", "Extra inputs are not permitted"]),
        ("max_batch_size: -1\n", ["max_batch_size", "greater than or equal to 0"]),
        (
            "max_batch_size: 4\npreferred_batch_sizes: [8]\n",
            ["preferred_batch_sizes", "exceed max_batch_size 4"],
        ),
        ("task: {type: video-captioning}\n", ["task", "video-captioning"]),
        ("- a list\n", ["expected a mapping"]),
        ("inputs: [{name: x, datatype: FLOAT, shape: [1]}]\n", ["inputs.0.datatype"]),
        ("key: [unclosed\n", ["cannot read YAML"]),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_speech_task_needs_a_vocabulary() -> None:
    with pytest.raises(ValidationError, match="vocabulary"):
        SpeechRecognitionTask.model_validate({"type": "speech-recognition"})


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_PORT", "9123")
    monkeypatch.setenv("DEEPSERVE_PROVIDERS", '["CPUExecutionProvider"]')
    settings = Settings()
    assert settings.port == 9123 and settings.providers == ["CPUExecutionProvider"]
    assert Settings(port=1234).port == 1234  # explicit values (CLI flags) win over the environment


def test_settings_reject_unknown_provider_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="DEEPSERVE_PROVIDERS"):
        Settings(providers=["CUDA"])


def test_configuration_reference_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "generate_reference.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
