"""The image families: digit data (seeded, correctly labelled, real held-out handwriting), the image-folder
loader, training vs serving preprocessing, and a quick build of cnn and mlp.

Real fonts, real scikit-learn digits, real torch, real ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw, ImageFont

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from sklearn.svm import SVC  # noqa: E402

from models.data.images import (  # noqa: E402
    HELDOUT_FRACTION,
    SIZE,
    digits,
    find_fonts,
    load_folder,
    real_digits,
    render_font_digits,
    to_png,
)
from models.recipes.base import BuildOptions, FamilyResult  # noqa: E402
from models.recipes.images import RECIPES  # noqa: E402
from service.repository.config import ImageClassificationTask, load_config  # noqa: E402
from service.tasks.image import decode_image  # noqa: E402

FAMILIES = [r.name for r in RECIPES]
needs_fonts = pytest.mark.skipif(
    not find_fonts(), reason="no TrueType fonts that draw digits (apt-get install fonts-dejavu)"
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the CI machine has 2 shared cores; one thread also keeps builds bit-exact


def _rows(images: npt.NDArray[Any]) -> list[bytes]:
    """One hashable key per image."""
    return [np.ascontiguousarray(x).tobytes() for x in images.reshape(len(images), -1)]


def _serving_task(*, mean: float = 0.0, std: float = 1.0, resize: str = "ink") -> ImageClassificationTask:
    """The preprocessing the image recipes publish (see models/recipes/images.py `_config`)."""
    return ImageClassificationTask(
        input="image", output="logits", size=(SIZE, SIZE), channels="L", resize=resize,
        invert="auto", autocontrast=True, mean=[mean], std=[std],
    )


# ---- data ----------------------------------------------------------------------------------------


@needs_fonts
def test_font_digits_are_seeded() -> None:
    fonts = find_fonts()
    a_x, a_y = render_font_digits(per_class=3, seed=7, fonts=fonts)
    b_x, b_y = render_font_digits(per_class=3, seed=7, fonts=fonts)
    c_x, _ = render_font_digits(per_class=3, seed=8, fonts=fonts)
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    assert not np.array_equal(a_x, c_x), "another seed draws other deformations"
    assert a_x.shape == (30, SIZE, SIZE) and a_x.dtype == np.float32
    assert a_y.tolist() == list(range(10)) * 3
    assert a_x.min() == 0.0 and a_x.max() == 1.0, "stretched like the server's autocontrast"


@needs_fonts
def test_font_digits_carry_their_own_label() -> None:
    """A classifier fitted on real handwriting reads rendered digits as their labels, not shifted ones."""
    real_x, real_y = real_digits()
    font_x, font_y = render_font_digits(per_class=30, seed=0, fonts=find_fonts())
    pred = SVC(C=10).fit(real_x.reshape(len(real_x), -1), real_y).predict(font_x.reshape(len(font_x), -1))
    right = float(np.mean(pred == font_y))
    shifted = [float(np.mean(pred == (font_y + k) % 10)) for k in range(1, 10)]
    assert right > 0.35, f"only {right:.0%} of rendered digits read as their label (chance is 10%)"
    assert max(shifted) < right / 2, f"a shifted labelling fits as well: {right:.2f} vs {shifted}"


def test_real_digits_are_mnist_framed() -> None:
    x, y = real_digits()
    assert x.shape == (1797, SIZE, SIZE) and x.dtype == np.float32
    assert np.bincount(y, minlength=10).min() >= 170, "about 180 scans of every digit"
    border = np.concatenate([x[:, :3].ravel(), x[:, -3:].ravel(), x[:, :, :3].ravel(), x[:, :, -3:].ravel()])
    assert border.max() < 0.05, "the digit sits in the central 20x20, light on a dark ground"
    assert np.allclose(x.reshape(len(x), -1).max(axis=1), 1.0)


@needs_fonts
def test_held_out_split_is_real_handwriting_and_the_same_for_every_seed() -> None:
    real_x, _ = real_digits()
    fonts = find_fonts()
    a = digits(seed=0, fonts_per_class=4)
    b = digits(seed=1, fonts_per_class=4)
    font_x, _ = render_font_digits(per_class=4, seed=0, fonts=fonts)
    real, font, test = set(_rows(real_x)), set(_rows(font_x)), _rows(a.test_x.numpy())
    assert len(test) == math.ceil(len(real_x) * HELDOUT_FRACTION)
    assert all(t in real for t in test), "every held-out image is a real handwritten scan"
    assert not font & set(test), "no font-rendered digit is held out"
    torch.testing.assert_close(a.test_x, b.test_x, rtol=0, atol=0)
    torch.testing.assert_close(a.test_y, b.test_y, rtol=0, atol=0)
    # train = the rest of the real scans + exactly the font digits of this seed
    train = _rows(a.train_x.numpy())
    assert len(train) == len(real_x) - len(test) + 40 == a.source["real_train"] + a.source["font_train"]
    assert sorted(train[: a.source["real_train"]] + test) == sorted(_rows(real_x))
    assert train[a.source["real_train"] :] == _rows(font_x)
    assert not np.array_equal(a.train_x.numpy(), b.train_x.numpy()), "the font part follows --seed"
    assert a.labels == [str(d) for d in range(10)]
    assert "real handwriting only" in a.source["heldout"]


def test_quick_data_keeps_part_of_the_real_training_split() -> None:
    full = digits(seed=0, fonts_per_class=0)
    half = digits(seed=0, fonts_per_class=0, real_fraction=0.5)
    assert half.source["real_train"] == full.source["real_train"] // 2 and half.source["font_train"] == 0
    torch.testing.assert_close(half.test_x, full.test_x, rtol=0, atol=0)
    assert set(_rows(half.train_x.numpy())) <= set(_rows(full.train_x.numpy()))


def test_server_preprocessing_gives_back_the_training_image() -> None:
    """A held-out image sent as a PNG (dark on light, as people send) reaches the net as it was trained on."""
    x, _ = real_digits()
    task = _serving_task(resize="pad")  # `ink` re-frames by the strokes' box: close, not identical
    for image in x[:25]:
        served = decode_image(to_png(image), task).tensor
        assert served.shape == (1, SIZE, SIZE)
        np.testing.assert_allclose(served[0], image, atol=0.6 / 255, rtol=0)


def _draw(digit: str, *, size: tuple[int, int], ink: int, paper: int) -> bytes:
    """A dark-on-light drawing of `digit` of any size, as a user would upload it."""
    image = Image.new("RGB", size, (paper, paper, paper))
    font = ImageFont.load_default(size=min(size) * 0.7)
    ImageDraw.Draw(image).text(
        (size[0] / 2, size[1] / 2), digit, fill=(ink, ink, ink), font=font, anchor="mm"
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_folder_loader_decodes_like_the_server(tmp_path: Path) -> None:
    sizes = [(40, 60), (64, 64), (90, 50), (33, 47)]
    for name, digit in (("seven", "7"), ("one", "1"), ("zero", "0")):
        (tmp_path / name).mkdir()
        for i, size in enumerate(sizes):
            (tmp_path / name / f"{i}.png").write_bytes(_draw(digit, size=size, ink=20 + 10 * i, paper=230))
    (tmp_path / ".cache").mkdir()  # hidden folders are not classes
    (tmp_path / "seven" / ".DS_Store").write_bytes(b"not an image")

    data = load_folder(tmp_path, seed=0)
    assert data.labels == ["one", "seven", "zero"], "labels are the sorted folder names"
    assert len(data.train_y) + len(data.test_y) == 12 and len(data.test_y) == 3
    assert sorted(data.test_y.tolist()) == [0, 1, 2], "a stratified held-out split"
    assert data.train_x.shape == (9, 1, SIZE, SIZE) and data.train_x.dtype == torch.float32
    task = _serving_task()
    for x, y in zip(data.train_x, data.train_y, strict=True):
        assert x.min() == 0.0 and x.max() > 0.5, "inverted and autocontrasted: light strokes on dark"
        name = data.labels[int(y)]
        served = [decode_image(f.read_bytes(), task).tensor for f in (tmp_path / name).glob("*.png")]
        assert any(np.array_equal(x.numpy(), s) for s in served), (
            "each image is exactly what the server feeds"
        )
    again = load_folder(tmp_path, seed=5)
    torch.testing.assert_close(again.test_x, data.test_x, rtol=0, atol=0)


def test_image_folder_loader_needs_two_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.png").write_bytes(_draw("3", size=(28, 28), ink=0, paper=255))
    with pytest.raises(ValueError, match="one sub-folder per class"):
        load_folder(tmp_path, seed=0)


# ---- quick builds --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FamilyResult]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("image-repo")
    return {r.name: r.build(BuildOptions(out=out, quick=True, progress=False)) for r in RECIPES}


@pytest.mark.train
@pytest.mark.parametrize("family", FAMILIES)
def test_quick_build_exports_valid_dynamic_onnx(built: dict[str, FamilyResult], family: str) -> None:
    result = built[family]
    assert result.path.name == "1" and result.path.parent.name == family
    model = onnx.load(str(result.path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (image,), (logits,) = model.graph.input, model.graph.output
    assert (image.name, logits.name) == ("image", "logits")
    in_dims, out_dims = image.type.tensor_type.shape.dim, logits.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and out_dims[0].dim_param, "batch axis is dynamic"
    assert [d.dim_value for d in in_dims[1:]] == [1, SIZE, SIZE] and out_dims[1].dim_value == 10


@pytest.mark.train
@pytest.mark.parametrize("family", FAMILIES)
def test_quick_build_matches_torch_at_several_batch_sizes(
    built: dict[str, FamilyResult], family: str
) -> None:
    result = built[family]
    assert {"batch1", "batch8"} <= set(result.parity) and max(result.parity.values()) <= 1e-4
    assert result.net is not None and not result.net.training
    session = ort.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch in (1, 3, 8):  # 3 was never exported nor checked by the build
        x = rng.standard_normal((batch, 1, SIZE, SIZE)).astype(np.float32)
        (got,) = session.run(None, {"image": x})
        with torch.no_grad():
            want = result.net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.train
@pytest.mark.parametrize("family", FAMILIES)
def test_quick_build_config_and_provenance(built: dict[str, FamilyResult], family: str) -> None:
    result = built[family]
    config = load_config(result.path.parent / "config.yaml")
    assert config.name == family and config.labels == [str(d) for d in range(10)]
    task = config.task
    assert isinstance(task, ImageClassificationTask)
    assert (
        task.input, task.output, task.size, task.channels, task.invert, task.autocontrast, task.resize,
    ) == ("image", "logits", (SIZE, SIZE), "L", "auto", True, "ink")
    assert 0.0 < task.mean[0] < 0.5 and 0.1 < task.std[0] < 1.0
    assert (result.path / "labels.txt").read_text().split() == config.labels

    facts = config.provenance
    assert facts["family"] == family and facts["quick"] is True and facts["seed"] == 0
    assert facts["metrics"] == pytest.approx(result.metrics)
    assert facts["parity"] == pytest.approx(result.parity)
    assert facts["sha256"] == hashlib.sha256((result.path / "model.onnx").read_bytes()).hexdigest()
    assert facts["package_version"] == importlib.metadata.version("deepserve")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    assert facts["git_commit"].removesuffix("-dirty") == (
        head.stdout.strip() if head.returncode == 0 else "unknown"
    )
    assert facts["opset"] >= 17 and facts["data"]["heldout_size"] == 450
    assert json.loads((result.path / "provenance.json").read_text()) == facts

    metrics = result.metrics
    assert metrics["heldout_size"] == 450 and metrics["baseline_accuracy"] < 0.15
    assert metrics["accuracy"] > 0.5, "even two epochs learn digits far above the majority class"


@pytest.mark.train
def test_quick_build_is_deterministic(built: dict[str, FamilyResult], tmp_path: Path) -> None:
    """The same seed gives the same metrics and the same weights."""
    for recipe in RECIPES:
        again = recipe.build(BuildOptions(out=tmp_path, quick=True, progress=False))
        first = built[recipe.name]
        assert again.metrics == first.metrics
        want = onnx.load(str(first.path / "model.onnx")).graph.initializer
        got = onnx.load(str(again.path / "model.onnx")).graph.initializer
        assert [i.name for i in got] == [i.name for i in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(g), onnx.numpy_helper.to_array(w))
