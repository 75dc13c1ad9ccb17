"""Load-time checks of what a model's task needs besides model.onnx: tokenizer, labels, vocabulary.

Called by the registry right after the session is built (in a load thread), so a missing or corrupt
tokenizer.json, a labels.txt with the wrong number of lines, or a CTC vocabulary that does not match the
model's output makes the version UNAVAILABLE with the reason at load, instead of READY and then a 400
on every request. The tokenizer is really loaded (through `service.tasks.text.load_tokenizer`, whose
cache then serves the first request).
"""

from __future__ import annotations

from pathlib import Path

from service.repository.config import (
    AnomalyDetectionTask,
    AudioClassificationTask,
    EmbeddingTask,
    ImageClassificationTask,
    ImageGenerationTask,
    ModelConfig,
    SpeechRecognitionTask,
    TensorSpec,
    TextClassificationTask,
)

_KNOWN = (ImageClassificationTask, TextClassificationTask, EmbeddingTask, SpeechRecognitionTask,
          AudioClassificationTask, AnomalyDetectionTask, ImageGenerationTask)


def check_side_files(config: ModelConfig, folder: Path) -> str | None:
    """Why the served `config`'s task cannot work with the files in `folder` (the version folder), or None."""
    task = config.task
    if not isinstance(task, _KNOWN):
        return None  # no task, or a task type these checks do not know: nothing to check
    inputs = {spec.name: spec for spec in config.inputs}
    outputs = {spec.name: spec for spec in config.outputs}
    for field in ("input", "input_ids", "attention_mask", "lengths_input", "noise_input", "label_input"):
        name = getattr(task, field, None)
        if name is not None and name not in inputs:
            return f"task.{field} is '{name}' but the model's inputs are {list(inputs)}; fix config.yaml"
    for field in ("output", "output_lengths"):
        name = getattr(task, field, None)
        if name is not None and name not in outputs:
            return f"task.{field} is '{name}' but the model's outputs are {list(outputs)}; fix config.yaml"
    if isinstance(task, TextClassificationTask | EmbeddingTask):
        problem = _check_tokenizer(task, folder)
        if problem:
            return problem
    if isinstance(task, ImageClassificationTask | TextClassificationTask | AudioClassificationTask):
        names = task.labels or config.labels
        source = "task.labels" if task.labels else "labels (config.yaml or labels.txt)"
        classes = _last_dim(outputs[task.output])
        if names and classes is not None and len(names) != classes:
            return (f"{source} has {len(names)} names but output '{task.output}' has {classes} classes; "
                    "give one label per class")
    if isinstance(task, AnomalyDetectionTask):
        problem = _check_reconstruction(inputs[task.input], outputs[task.output])
        if problem:
            return problem
    if isinstance(task, ImageGenerationTask):
        noise = inputs[task.noise_input].shape
        if noise and noise[-1] > 0 and noise[-1] != task.noise_dim:
            return (f"task.noise_dim is {task.noise_dim} but input '{task.noise_input}' takes vectors of "
                    f"{noise[-1]}; fix config.yaml")
        if len(outputs[task.output].shape) not in (0, 4):
            return (f"output '{task.output}' has shape {outputs[task.output].shape}; image-generation needs "
                    f"[batch, channels, height, width] ({task.layout})")
    if isinstance(task, SpeechRecognitionTask):
        size = len(task.vocabulary)
        if not 0 <= task.blank_index < size:
            return f"task.blank_index {task.blank_index} is outside the vocabulary of {size} symbols"
        symbols = _last_dim(outputs[task.output])
        if symbols is not None and symbols != size:
            return (f"task.vocabulary has {size} symbols but output '{task.output}' has {symbols} per frame; "
                    "give one symbol per output column")
    return None


def _check_tokenizer(task: TextClassificationTask | EmbeddingTask, folder: Path) -> str | None:
    from service.tasks import text  # the tokenizers import is paid only by models with a text task

    name = task.tokenizer
    if Path(name).name != name or name in ("", ".", ".."):
        return f"task.tokenizer '{name}' must be a plain file name beside model.onnx"
    refuse = isinstance(task, TextClassificationTask) and task.truncation == "refuse"
    try:
        loaded = text.load_tokenizer(folder / name, max_length=task.max_length, truncate=not refuse)
        vocabulary = loaded.tokenizer.get_vocab_size()
    except Exception as exc:  # ModelLoadError from text.py, or whatever the tokenizers library raises
        return f"tokenizer {name}: {getattr(exc, 'detail', None) or exc}"
    if vocabulary == 0:
        return f"tokenizer {name} has an empty vocabulary"
    return None


def _check_reconstruction(source: TensorSpec, reconstruction: TensorSpec) -> str | None:
    """An autoencoder's output must have its input's shape; dimensions that are dynamic (-1) match any."""
    a, b = source.shape, reconstruction.shape
    if not a or not b:
        return None  # shapes unknown to the graph: checked per request
    if len(a) != len(b) or any(x > 0 and y > 0 and x != y for x, y in zip(a, b, strict=True)):
        return (f"output '{reconstruction.name}' has shape {b} but input '{source.name}' has {a}; "
                "anomaly-detection needs an output of the input's shape (a reconstruction)")
    return None


def _last_dim(spec: TensorSpec) -> int | None:
    return spec.shape[-1] if len(spec.shape) >= 2 and spec.shape[-1] > 0 else None
