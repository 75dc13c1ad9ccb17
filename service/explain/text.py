"""Explain a text classification: the words of the text (runs of non-space characters) are the features.

The text is tokenized exactly as /predict does (same checks, truncation, lowercasing); each token is
given to the word its character offsets fall in, so WordPiece pieces merge back into the words a
person wrote. A removed word's tokens become the tokenizer's mask token when it has one, otherwise
they are hidden through the attention mask (the model then ignores them, as it ignores padding).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidInput
from service.explain import options
from service.explain.evaluate import attribute_class
from service.explain.kernelshap import BoolArray, Scores
from service.explain.schema import Baseline, ExplainOptions, TextExplanation, WordScore
from service.repository.config import TextClassificationTask
from service.repository.registry import LoadedModel
from service.tasks import labels, text
from service.tasks.pipeline import Payload, cast, check_count
from service.tasks.schema import LabelScore
from service.types import TensorMap

METHODS = ("kernel-shap", "occlusion")
DEFAULT_BUDGET = 64
"""KernelSHAP evaluations by default: at least 4 per word for short texts (up to MAX_BUDGET)."""
MASK_TOKENS = ("[MASK]", "<mask>", "<MASK>")
_WORD = re.compile(r"\S+")


@dataclass(slots=True)
class Words:
    spans: list[tuple[int, int]]
    """(start, end) character offsets of every word in the text as sent."""
    features: list[int]
    """Indices into `spans` of the words that have tokens (the rest were cut by truncation)."""
    token_feature: np.ndarray
    """(L,) the feature each token belongs to; -1 for special tokens."""
    ids: np.ndarray
    """(L,) token ids."""
    truncated: bool
    mask_id: int | None


def _words(model: LoadedModel, task: TextClassificationTask, sent: str) -> Words:
    refuse = task.truncation == "refuse"
    tok = text.load_tokenizer(
        model.side_file(task.tokenizer), max_length=task.max_length, truncate=not refuse
    )
    encoded = text.encode(
        [sent], tok, max_length=task.max_length, lowercase=task.lowercase, refuse_long=refuse
    )
    encoding = tok.tokenizer.encode(sent.lower() if task.lowercase else sent)
    spans = [(m.start(), m.end()) for m in _WORD.finditer(sent)]
    starts = [s for s, _ in spans]
    token_word = np.full(len(encoding.ids), -1, dtype=np.int64)
    for i, ((begin, end), special) in enumerate(
        zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
    ):
        if not special and end > begin:
            token_word[i] = bisect.bisect_right(starts, begin) - 1
    used = sorted({int(w) for w in token_word if w >= 0})
    feature_of = {word: f for f, word in enumerate(used)}
    token_feature = np.array([feature_of.get(int(w), -1) for w in token_word], dtype=np.int64)
    mask_id = next((found for t in MASK_TOKENS if (found := tok.tokenizer.token_to_id(t)) is not None), None)
    return Words(spans=spans, features=used, token_feature=token_feature, ids=encoded.ids[0],
                 truncated=encoded.truncated[0], mask_id=mask_id)


async def explain_text(model: LoadedModel, payload: Payload, opts: ExplainOptions, *,
                       timeout_s: float) -> TextExplanation:
    task = model.config.task
    assert isinstance(task, TextClassificationTask)
    check_count(model, len(payload.texts), "texts")
    if len(payload.texts) != 1:
        raise InvalidInput(
            f'explain takes exactly one text per request; got {len(payload.texts)}: send {{"text": ...}}'
        )
    sent = payload.texts[0]
    text.check_texts([sent])
    chosen = options.method(opts, task=task.type, allowed=METHODS, default="kernel-shap")
    words = await run_in_threadpool(_words, model, task, sent)
    if not words.features:
        raise InvalidInput("the text has no words the tokenizer keeps; send some words")
    if words.mask_id is None and task.attention_mask is None:
        raise InvalidInput(
            f"model '{model.name}' has neither a mask token nor an attention mask, so words cannot be removed"
        )
    plan = options.plan(
        chosen, opts, features=len(words.features), noun="words", default_budget=DEFAULT_BUDGET
    )

    def build(masks: BoolArray) -> TensorMap:
        keep = np.ones((masks.shape[0], words.ids.size), dtype=bool)  # (n, L)
        real = words.token_feature >= 0
        keep[:, real] = masks[:, words.token_feature[real]]
        ids = np.broadcast_to(words.ids, keep.shape).copy()
        attention = np.ones(keep.shape, dtype=np.int64)
        if words.mask_id is not None:
            ids[~keep] = words.mask_id
        else:
            attention[~keep] = 0
        inputs = {task.input_ids: cast(model.config, task.input_ids, ids)}
        if task.attention_mask:
            inputs[task.attention_mask] = cast(model.config, task.attention_mask, attention)
        return inputs

    names = task.labels or model.config.labels
    result = await attribute_class(
        model,
        plan,
        build,
        opts,
        output_name=task.output,
        names=names,
        activation="sigmoid" if task.multi_label else "softmax",
        timeout_s=timeout_s,
    )
    probs, target, phi, efficiency = result.probs, result.target, result.phi, result.efficiency
    scores: Scores = probs[:, target]
    per_word = dict(zip(words.features, phi.tolist(), strict=True))
    label = labels.label_names(names, probs.shape[1])[target]
    ranked = labels.rank(probs[0], names, top_k=task.top_k, return_all=False)
    kind, description = (
        ("mask-token", "each removed word's tokens replaced by the mask token")
        if words.mask_id is not None
        else ("attention-mask", "each removed word's tokens hidden through the attention mask (as padding)")
    )
    return TextExplanation(
        model=model.name, version=model.version, task=task.type, method=plan.method,
        explained=f"{'sigmoid' if task.multi_label else 'softmax'} probability of label '{label}'",
        target=label, score=float(scores[0]),
        baseline=Baseline(kind=kind, description=f"{description}; the baseline removes every word",
                          score=float(scores[1])),
        evaluations=int(plan.coalitions.masks.shape[0]), seed=opts.seed, efficiency=efficiency,
        prediction=[LabelScore(label=n, score=s) for n, s in ranked.top],
        words=[WordScore(text=sent[s:e], start=s, end=e, score=float(f"{per_word.get(i, 0.0):.6g}"))
               for i, (s, e) in enumerate(words.spans)],
        tokens=int(words.ids.size), truncated=words.truncated,
    )
