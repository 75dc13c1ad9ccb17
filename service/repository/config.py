"""Per-model configuration: what `REPO/<model>/config.yaml` may say, validated by pydantic.

The training package writes this file through these same classes (`models/publish.py`), so what the
trainer writes is exactly what the server reads. A model without a config gets one derived from its
ONNX graph (`service/repository/scan.py`). Every field has a docstring: they feed the README's
configuration reference (`docs/configuration.md`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)


class TensorSpec(_Strict):
    """One input or output tensor of a model."""

    name: str
    """Tensor name in the ONNX graph."""
    datatype: Datatype
    """Open Inference Protocol datatype (FP32, INT64, ...)."""
    shape: list[int]
    """Full shape; -1 marks a dynamic axis. With batching on, axis 0 is the batch axis."""
    pad_value: float | None = None
    """Inputs only: when requests in one batch differ in a non-batch axis (texts of different lengths,
    audio of different durations), pad them to the longest with this value. Unset: only requests
    of equal shape share a batch."""


class VersionPolicy(_Strict):
    """Which integer version folders are served (Triton's version_policy)."""

    policy: Literal["latest", "all", "specific"] = "latest"
    """`latest`: the newest `num_versions`; `all`: every version; `specific`: those listed in `versions`."""
    num_versions: int = Field(1, ge=1)
    """With `latest`: how many of the newest versions to serve."""
    versions: list[int] = []
    """With `specific`: the versions to serve."""


# ---- task sections: the pre- and post-processing of the friendly /v1 endpoints -------------------


class ImageInput(_Strict):
    """How an uploaded image (PNG/JPEG/...) becomes the model's input tensor; shared by the image tasks."""

    input: str
    """Model input that receives the image tensor."""
    size: tuple[int, int]
    """(height, width) the image is brought to."""
    channels: Literal["RGB", "L"] = "RGB"
    """Colour mode fed to the model: RGB (3 channels) or L (grayscale, 1 channel)."""
    resize: Literal["stretch", "center-crop", "pad", "ink"] = "stretch"
    """`stretch` to size; `center-crop` the shorter side then scale; `pad` to a square then scale; `ink`
    crop to the strokes (after `invert`), pad that to a square with a margin, then scale: for digits and
    drawings that may sit anywhere on a canvas of any shape."""
    mean: list[float] = [0.0]
    """Per-channel mean subtracted after scaling pixels to [0, 1]."""
    std: list[float] = [1.0]
    """Per-channel standard deviation divided by after subtracting the mean."""
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    """Tensor layout of the model input."""
    invert: bool | Literal["auto"] = False
    """Invert intensities first: `true` for models trained on light strokes on dark ground (MNIST-style
    digits) fed dark-on-light images; `auto` decides per image from its border (a light border means
    dark strokes on light ground, so it is inverted; a dark one is left alone), so both polarities
    reach the model as light on dark."""
    autocontrast: bool = False
    """Stretch intensities to the full range before normalising (helps with photos of paper)."""

    @model_validator(mode="after")
    def _check_normalisation(self) -> ImageInput:
        channels = 3 if self.channels == "RGB" else 1
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(
                    f"task.{name} has {len(values)} values; give 1 or {channels} (channels {self.channels})"
                )
        if any(s == 0 for s in self.std):
            raise ValueError("task.std must not contain 0")
        return self


class ImageClassificationTask(ImageInput):
    """Image in (PNG/JPEG/...), top-k labels out."""

    type: Literal["image-classification"] = "image-classification"
    output: str
    """Model output holding class scores, shape [batch, classes]."""
    logits: bool = True
    """The output is logits (softmax is applied); false when the model already emits probabilities."""
    labels: list[str] = []
    """Class names by index."""
    top_k: int = Field(5, ge=1)
    """Default number of labels returned."""


class AnomalyDetectionTask(ImageInput):
    """Image in, reconstruction error out: an autoencoder flags images unlike its training data."""

    type: Literal["anomaly-detection"] = "anomaly-detection"
    output: str
    """Model output holding the reconstruction; it must have the input's shape."""
    threshold: float = Field(gt=0)
    """Scores above this are anomalies (calibrate it on held-out normal images)."""
    score: Literal["mse", "mae"] = "mse"
    """Reconstruction error per image: mean squared or mean absolute difference, over every input
    element in the model's input space (after `mean`/`std`)."""
    false_positive_rate: float | None = Field(None, gt=0, lt=1)
    """The share of normal calibration images scoring above `threshold` (documentation, shown in
    responses)."""
    calibration_size: int | None = Field(None, ge=1)
    """How many held-out normal images `threshold` was calibrated on."""


class ImageGenerationTask(_Strict):
    """Noise (and a class) in, images out: a GAN generator or a decoder."""

    type: Literal["image-generation"] = "image-generation"
    noise_input: str = "z"
    """Model input for the noise, float32 [batch, noise_dim]."""
    noise_dim: int = Field(ge=1)
    """Length of each noise vector."""
    noise: Literal["normal", "uniform"] = "normal"
    """Distribution the noise is drawn from: standard normal, or uniform on [-1, 1]."""
    label_input: str | None = "label"
    """Model input for the class index, int64 [batch]; unset for an unconditional generator."""
    labels: list[str] = []
    """Class names by index (conditional generators); requests name classes by index."""
    output: str = "image"
    """Model output holding the images, [batch, channels, height, width] (or NHWC, see `layout`)."""
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    """Tensor layout of the output."""
    value_range: tuple[float, float] = (0.0, 1.0)
    """Output values mapped to black and white (e.g. [-1, 1] for a tanh generator)."""
    invert: bool = False
    """Draw the images inverted (dark strokes on light ground for a generator of light-on-dark digits)."""
    max_count: int = Field(64, ge=1)
    """Most images in one request."""

    @model_validator(mode="after")
    def _check(self) -> ImageGenerationTask:
        if self.label_input and not self.labels:
            raise ValueError(
                "task.labels is empty: a conditional generator (label_input set) needs its class names"
            )
        if self.value_range[0] == self.value_range[1]:
            raise ValueError("task.value_range must span a range, e.g. [0, 1]")
        return self


class TextClassificationTask(_Strict):
    """Text in, label scores out."""

    type: Literal["text-classification"] = "text-classification"
    tokenizer: str = "tokenizer.json"
    """A `tokenizers` tokenizer file beside model.onnx."""
    input_ids: str = "input_ids"
    """Model input for token ids, shape [batch, length]."""
    attention_mask: str | None = "attention_mask"
    """Model input for the mask (1 = token, 0 = padding); unset when the model has none."""
    token_type_ids: str = "token_type_ids"
    """Model input for segment ids (BERT-family exports); filled with the tokenizer's type ids (zeros
    for one text) whenever the ONNX graph has an input of this name, ignored otherwise."""
    output: str = "logits"
    """Model output holding class scores, shape [batch, classes]."""
    max_length: int = Field(128, ge=1)
    """Longest token sequence fed to the model."""
    truncation: Literal["truncate", "refuse"] = "truncate"
    """Longer texts are cut to max_length (the response says so) or refused with 400."""
    lowercase: bool = False
    """Lower-case text before tokenizing (when the tokenizer does not already)."""
    multi_label: bool = False
    """Independent sigmoid per label instead of a softmax over labels."""
    labels: list[str] = []
    """Class names by index."""
    top_k: int = Field(3, ge=1)
    """Default number of labels returned."""


class SpeechRecognitionTask(_Strict):
    """Audio in, transcript out (CTC greedy decoding)."""

    type: Literal["speech-recognition"] = "speech-recognition"
    input: str = "audio"
    """Model input for the waveform, float32 [batch, samples] in [-1, 1]."""
    lengths_input: str | None = "audio_lengths"
    """Model input for the number of valid samples per item (int64 [batch]); unset if none."""
    output: str = "log_probs"
    """Model output of per-frame log-probabilities, shape [batch, frames, vocabulary]."""
    output_lengths: str | None = "frame_lengths"
    """Model output of the number of valid frames per item; unset if every frame is valid."""
    sample_rate: int = 16000
    """Sample rate the model expects; other rates are resampled."""
    max_duration_s: float = Field(20.0, gt=0)
    """Longer recordings are refused with 400."""
    vocabulary: list[str]
    """CTC symbols by index; `blank_index` is the blank."""
    blank_index: int = 0
    """Index of the CTC blank symbol."""
    frame_shift_s: float = 0.01
    """Seconds between output frames (for timestamps)."""


class AudioClassificationTask(_Strict):
    """Audio in, labels out."""

    type: Literal["audio-classification"] = "audio-classification"
    input: str = "audio"
    """Model input for the waveform, float32 [batch, samples]."""
    lengths_input: str | None = None
    """Model input for valid samples per item, if the model has one."""
    output: str = "logits"
    """Model output holding class scores."""
    sample_rate: int = 16000
    """Sample rate the model expects."""
    max_duration_s: float = Field(20.0, gt=0)
    """Longer recordings are refused with 400."""
    logits: bool = True
    """Apply softmax to the output."""
    labels: list[str] = []
    """Class names by index."""
    top_k: int = Field(5, ge=1)
    """Default number of labels returned."""


class EmbeddingTask(_Strict):
    """Text in, vectors out."""

    type: Literal["embedding"] = "embedding"
    tokenizer: str = "tokenizer.json"
    """A `tokenizers` tokenizer file beside model.onnx."""
    input_ids: str = "input_ids"
    """Model input for token ids."""
    attention_mask: str | None = "attention_mask"
    """Model input for the mask."""
    token_type_ids: str = "token_type_ids"
    """Model input for segment ids; filled with the tokenizer's type ids whenever the graph has it."""
    output: str = "last_hidden_state"
    """Model output: [batch, length, dim] token states, or [batch, dim] already pooled."""
    max_length: int = Field(128, ge=1)
    """Longest token sequence fed to the model (longer texts are truncated)."""
    pooling: Literal["mean", "cls", "none"] = "mean"
    """How token states become one vector; `none` when the output is already pooled."""
    normalize: bool = True
    """L2-normalise each vector."""


TaskConfig = Annotated[
    ImageClassificationTask
    | TextClassificationTask
    | SpeechRecognitionTask
    | AudioClassificationTask
    | EmbeddingTask
    | AnomalyDetectionTask
    | ImageGenerationTask,
    Field(discriminator="type"),
]


class Warmup(_Strict):
    """Values fed at warm-up instead of zeros (graphs that refuse zeros: a sample rate of 0, an empty
    text)."""

    inputs: dict[str, float | list[Any]] = {}
    """Input name -> a number (every element of the warm-up tensor) or nested lists of the exact tensor."""


class ModelConfig(_Strict):
    """How one model (all its versions) is served. Every field is optional in `config.yaml`."""

    name: str | None = None
    """Model name; defaults to the folder name and must match it when given."""
    description: str = ""
    """Free text shown in metadata and `GET /v1/models`."""
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    """Backend; ONNX Runtime is the only one."""
    inputs: list[TensorSpec] = []
    """Inputs; empty means read them from the ONNX graph. Given entries may set `pad_value`."""
    outputs: list[TensorSpec] = []
    """Outputs; empty means read them from the ONNX graph."""
    max_batch_size: int | None = Field(None, ge=0)
    """Most items in one server-side batch; 0 turns batching off. Unset: 32 when every input's
    first axis is dynamic in the graph, else 0."""
    max_queue_delay_ms: float = Field(2.0, ge=0)
    """Longest time the oldest queued request waits for a batch to fill, once concurrent requests are
    queued. An idle server runs a lone request at once."""
    preferred_batch_sizes: list[int] = []
    """Batch sizes to cut at as soon as they are reached (before max_batch_size)."""
    max_queue_size: int = Field(256, ge=1)
    """Most requests waiting per model version; beyond it the server answers 503 with Retry-After."""
    request_timeout_s: float | None = Field(None, gt=0)
    """Default per-request timeout (504 after it); unset: the server's `request_timeout_s`."""
    instances: int = Field(1, ge=1)
    """ONNX Runtime sessions run in parallel for this model."""
    providers: list[str] | None = None
    """Execution-provider preference, e.g. [CUDAExecutionProvider, CPUExecutionProvider];
    unset: the server's `providers` setting."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime choose."""
    inter_op_threads: int = Field(0, ge=0)
    """ONNX Runtime inter-op threads per session; 0 lets ONNX Runtime choose."""
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimisation level."""
    intra_op_spinning: bool = False
    """Let ONNX Runtime's intra-op threads spin while they wait for work (ONNX Runtime's own default).
    Off here: spinning threads burn the CPU the event loop needs to parse and answer requests (on a
    loaded 2-core machine, 2-7x fewer small-model requests per second with it on). Turn it on when the
    server has cores to spare and the lowest single-request latency matters."""
    io_binding: Literal["auto", "on", "off"] = "auto"
    """Run through ONNX Runtime's IO binding (outputs bound to the session's device, copied to the host
    once; inputs staged in pinned host memory where the CUDA provider offers it). `auto`: on with the
    CUDA provider, off on CPU, where plain runs copy nothing anyway."""
    cuda_graph: bool = False
    """Fixed-shape buffers per batch size (`preferred_batch_sizes`, else `max_batch_size`; batches are
    padded up to the next one) and, on the CUDA provider, one captured CUDA graph per size. Needs every
    dim after the batch axis static. On CPU the fixed buffers run without a graph."""
    warmup: bool | Warmup = True
    """Run inferences at load (batch 1 and every preferred batch size) so the first request is not slow:
    `true` feeds zeros; a mapping gives values for some inputs, e.g. `{inputs: {sr: 16000}}`; `false`
    skips it. A failed warm-up is logged as a warning and the model is served anyway."""
    version_policy: VersionPolicy = VersionPolicy()
    """Which versions are served."""
    labels: list[str] = []
    """Class names by index (also read from labels.txt beside model.onnx when empty)."""
    task: TaskConfig | None = None
    """Pre/post-processing for the /v1 task endpoints; unset: v2 tensors only."""
    provenance: dict[str, Any] = {}
    """Free-form facts about how the model was made (data, metrics, parity, sha256, commit)."""
    parameters: dict[str, Any] = {}
    """Free-form extra metadata shown in model metadata."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.max_batch_size and any(p > self.max_batch_size for p in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_sizes {self.preferred_batch_sizes}"
                f" exceed max_batch_size {self.max_batch_size}"
            )
        return self

    @property
    def batching(self) -> bool:
        return bool(self.max_batch_size)


CONFIG_FILE = "config.yaml"


def load_config(path: Path) -> ModelConfig:
    """Read and validate a config file; errors name the file and the offending field.

    Raises ValueError with a one-line, human-readable message.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ValueError(f"{path}: {problems}") from exc


def dump_config(config: ModelConfig, path: Path) -> None:
    """Write a config as YAML, leaving out defaults so files stay short."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    if config.task is not None:  # the discriminator has a default, but a reader needs it
        data["task"] = {"type": config.task.type, **data.get("task", {})}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
