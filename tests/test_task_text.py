"""Text encoding for the /v1 text tasks: tokenizing, padding, truncation, refusals, pooling, properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from task_models import word_tokenizer

from service.errors import InvalidInput, ModelLoadError, PayloadTooLarge
from service.tasks.text import MAX_TEXT_CHARS, LoadedTokenizer, encode, load_tokenizer, pool


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    word_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_file: Path) -> LoadedTokenizer:
    return load_tokenizer(tokenizer_file, max_length=4, truncate=True)


def test_texts_are_padded_to_the_longest_with_the_pad_id(tok: LoadedTokenizer) -> None:
    encoded = encode(["hello world", "good"], tok, max_length=4, lowercase=False, refuse_long=False)
    assert encoded.ids.dtype == np.int64 and encoded.ids.shape == (2, 2)
    assert encoded.ids.tolist() == [[2, 3], [4, 0]]  # [PAD] is id 0
    assert encoded.mask.tolist() == [[1, 1], [1, 0]]
    assert encoded.lengths == [2, 1] and encoded.truncated == [False, False]


def test_long_texts_are_truncated_and_say_so(tok: LoadedTokenizer) -> None:
    encoded = encode(["what a lovely day is good"], tok, max_length=4, lowercase=False, refuse_long=False)
    assert encoded.ids.shape == (1, 4) and encoded.truncated == [True]


def test_long_texts_are_refused_when_the_model_says_so(tokenizer_file: Path) -> None:
    strict = load_tokenizer(tokenizer_file, max_length=4, truncate=False)
    with pytest.raises(InvalidInput, match="6 tokens long.*at most 4"):
        encode(["what a lovely day is good"], strict, max_length=4, lowercase=False, refuse_long=True)


def test_lowercase_maps_unknown_capitals_to_known_words(tok: LoadedTokenizer) -> None:
    assert encode(["HELLO"], tok, max_length=4, lowercase=True, refuse_long=False).ids.tolist() == [[2]]
    # [UNK]
    assert encode(["HELLO"], tok, max_length=4, lowercase=False, refuse_long=False).ids.tolist() == [[1]]


@pytest.mark.parametrize(("texts", "error", "words"), [
    ([], InvalidInput, "no text"),
    ([""], InvalidInput, "text 0 is empty"),
    (["fine", " \n\t "], InvalidInput, "text 1 is empty or whitespace"),
    (["x" * (MAX_TEXT_CHARS + 1)], PayloadTooLarge, "characters"),
])
def test_empty_and_oversized_texts_are_refused(
    tok: LoadedTokenizer, texts: list[str], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        encode(texts, tok, max_length=4, lowercase=False, refuse_long=False)


def test_a_missing_or_broken_tokenizer_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_tokenizer(tmp_path / "tokenizer.json", max_length=4, truncate=True)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="broken.json"):
        load_tokenizer(tmp_path / "broken.json", max_length=4, truncate=True)


def test_mean_pooling_ignores_padding_even_past_the_request_length() -> None:
    states = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # the batcher padded L from 2 to 3
    mask = np.array([[1, 1], [1, 0]], dtype=np.int64)
    vectors = pool(states, mask, pooling="mean", normalize=False)
    np.testing.assert_allclose(vectors, [[1.0, 2.0], [6.0, 7.0]])
    np.testing.assert_allclose(pool(states, mask, pooling="cls", normalize=False), states[:, 0])
    unit = pool(states, mask, pooling="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


ALPHABET = st.characters(codec="utf-8")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(ALPHABET, max_size=80), max_size=6))
def test_arbitrary_texts_encode_or_raise_input_errors(tok: LoadedTokenizer, texts: list[str]) -> None:
    try:
        encoded = encode(texts, tok, max_length=4, lowercase=True, refuse_long=False)
    except (InvalidInput, PayloadTooLarge):
        assert not texts or any(not t.strip() for t in texts)
        return
    assert encoded.ids.shape == encoded.mask.shape == (len(texts), max(encoded.lengths))
    assert encoded.ids.dtype == encoded.mask.dtype == np.int64
    assert all(1 <= n <= 4 for n in encoded.lengths)
    assert encoded.mask.sum(axis=1).tolist() == encoded.lengths
