"""assemble.py is pure numpy: stacking, padding, splitting and batch keys, with no event loop."""

from __future__ import annotations

import numpy as np
import pytest

from service.batching.assemble import batch_key, split, stack


def test_stack_concatenates_on_axis_0_and_keeps_dtypes() -> None:
    a = {"x": np.ones((2, 3), np.float16), "ids": np.arange(2, dtype=np.int64)}
    b = {"x": np.zeros((1, 3), np.float16), "ids": np.array([7], dtype=np.int64)}
    merged = stack([a, b], {})
    assert merged["x"].shape == (3, 3) and merged["x"].dtype == np.float16
    assert merged["ids"].dtype == np.int64 and merged["ids"].tolist() == [0, 1, 7]


def test_stack_of_one_request_is_untouched() -> None:
    a = {"x": np.ones((2, 3), np.float32)}
    assert stack([a], {})["x"] is a["x"]


def test_stack_pads_ragged_inputs_to_the_longest_with_the_pad_value() -> None:
    a = {"x": np.ones((1, 2), np.int64)}
    b = {"x": np.full((2, 4), 5, np.int64)}
    merged = stack([a, b], {"x": -1.0})["x"]
    assert merged.shape == (3, 4) and merged.dtype == np.int64
    assert merged[0].tolist() == [1, 1, -1, -1]
    assert merged[1:].tolist() == [[5] * 4] * 2


def test_stack_pads_every_ragged_axis() -> None:
    a = {"x": np.ones((1, 2, 3), np.float32)}
    b = {"x": np.ones((1, 3, 1), np.float32)}
    merged = stack([a, b], {"x": 0.0})["x"]
    assert merged.shape == (2, 3, 3)
    assert merged.sum() == a["x"].sum() + b["x"].sum()


def test_stack_refuses_ragged_inputs_without_a_pad_value() -> None:
    with pytest.raises(ValueError, match="'x' has different non-batch shapes.*no pad_value"):
        stack([{"x": np.ones((1, 2))}, {"x": np.ones((1, 3))}], {"x": None})


def test_stack_refuses_mixed_dtypes() -> None:
    with pytest.raises(ValueError, match="differs in dtype"):
        stack([{"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 2), np.float64)}], {})


def test_strings_stack_as_object_arrays_but_do_not_pad() -> None:
    a = {"s": np.array([["a", "b"]], dtype=object)}
    b = {"s": np.array([["c", "d"], ["e", "f"]], dtype=object)}
    merged = stack([a, b], {})["s"]
    assert merged.dtype == object and merged[:, 0].tolist() == ["a", "c", "e"]
    with pytest.raises(ValueError, match="strings cannot be padded"):
        stack([a, {"s": np.array([["x"]], dtype=object)}], {"s": 0.0})


def test_split_cuts_by_item_counts() -> None:
    outputs = {"y": np.arange(12, dtype=np.float32).reshape(6, 2), "n": np.arange(6)}
    parts = split(outputs, [1, 3, 2])
    assert [p["n"].tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    assert parts[1]["y"].shape == (3, 2) and parts[1]["y"].dtype == np.float32


def test_split_inverts_stack() -> None:
    rng = np.random.default_rng(0)
    items = [{"x": rng.normal(size=(n, 4)).astype(np.float32)} for n in (2, 1, 5)]
    parts = split(stack(items, {}), [2, 1, 5])
    for item, part in zip(items, parts, strict=True):
        np.testing.assert_array_equal(item["x"], part["x"])


def test_split_names_an_output_without_one_row_per_item() -> None:
    with pytest.raises(ValueError, match=r"output 'y' has shape \[4\] but the batch had 5 items"):
        split({"y": np.zeros(4)}, [2, 3])
    with pytest.raises(ValueError, match="output 's' has shape"):
        split({"s": np.float32(1.0).reshape(())}, [1])


def test_batch_key_groups_requests_that_can_share_a_batch() -> None:
    pads: dict[str, float | None] = {"ids": 0.0, "x": None}

    def key(ids_len: int, x_width: int, dtype: type = np.float32) -> object:
        return batch_key({"ids": np.zeros((1, ids_len), np.int64), "x": np.zeros((3, x_width), dtype)}, pads)

    assert key(5, 4) == key(9, 4)  # padded input: any length
    assert key(5, 4) != key(5, 8)  # unpadded input: equal non-batch dims only
    assert key(5, 4) != key(5, 4, np.float64)
    assert batch_key({"x": np.zeros((1, 2))}, {}) == batch_key({"x": np.zeros((7, 2))}, {})  # axis 0 is free
