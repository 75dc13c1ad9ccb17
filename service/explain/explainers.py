"""Task type -> the function that explains one input of that task (`EXPLAINERS`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from service.explain.audio import explain_audio
from service.explain.image import explain_image
from service.explain.schema import ExplainOptions, ExplainResponse
from service.explain.text import explain_text
from service.repository.registry import LoadedModel
from service.tasks.pipeline import Payload

Explainer = Callable[..., Awaitable[ExplainResponse]]
"""(model, payload, options, *, timeout_s) -> the explanation."""

EXPLAINERS: dict[str, Explainer] = {
    "image-classification": explain_image,
    "text-classification": explain_text,
    "speech-recognition": explain_audio,
    "audio-classification": explain_audio,
}


async def explain(
    model: LoadedModel, payload: Payload, opts: ExplainOptions, *, timeout_s: float
) -> ExplainResponse:
    """Explain the one item of `payload`; the caller checked that the model's task is explainable."""
    assert model.config.task is not None
    return await EXPLAINERS[model.config.task.type](model, payload, opts, timeout_s=timeout_s)
