"""The /v1 task routes over real HTTP (httpx -> the real app -> real ONNX Runtime on tiny real models).

The models (tests/task_models.py) have answers a test can predict: the image class is the mean
brightness, the text class the sum of token ids mod 3, the transcript the DC levels of the audio.
Images are made with Pillow and recordings with numpy + soundfile here; every error asserts status,
`code` and the useful words of `error`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import soundfile
from conftest import AppClient
from onnx_models import classifier_model, write_model
from PIL import Image
from task_models import (
    embedding_table,
    spell,
    token_ids,
    write_audio_classifier,
    write_embedding_model,
    write_image_model,
    write_speech_model,
    write_text_model,
)

CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}


def png(level: int, size: tuple[int, int] = (28, 28), mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, level if mode == "L" else (level,) * len(mode)).save(buffer, format=fmt)
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    message: str = body["error"]
    return message


def top(prediction: dict[str, Any]) -> str:
    label: str = prediction["labels"][0]["label"]
    return label


@pytest.fixture
async def client(repo: Path, app_client: AppClient) -> AsyncIterator[httpx.AsyncClient]:
    write_image_model(repo, "digits", max_batch_size=8)
    write_image_model(
        repo, "photos", channels=3, size=16, task={"resize": "center-crop", "labels": list("abcdefghij")}
    )
    write_text_model(repo, "sentiment")
    write_text_model(repo, "strict", task={"max_length": 2, "truncation": "refuse"})
    write_text_model(repo, "tags", task={"multi_label": True, "lowercase": True, "max_length": 2})
    write_embedding_model(repo, "embedder")
    write_speech_model(repo, "speech", task={"max_duration_s": 3})
    write_audio_classifier(repo, "levels")
    write_model(repo, "plain", classifier_model())
    async with app_client(**CPU) as http:
        yield http


# ---- image --------------------------------------------------------------------------------------------


async def test_several_uploaded_images_are_one_batch_in_request_order(client: httpx.AsyncClient) -> None:
    files = [("file", (f"{level}.png", png(level), "image/png")) for level in (255, 0, 128)]
    response = await client.post("/v1/models/digits/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "digits" and body["version"] == "1" and body["task"] == "image-classification"
    assert [top(p) for p in body["predictions"]] == ["9", "0", "5"]  # round(9 * 128/255) = 5
    assert len(body["predictions"][0]["labels"]) == 5  # the task's default top_k


async def test_json_base64_data_urls_and_raw_bodies_are_accepted(client: httpx.AsyncClient) -> None:
    b64 = base64.b64encode(png(255)).decode()
    as_json = await client.post(
        "/v1/models/digits/predict", json={"images": [b64, f"data:image/png;base64,{b64}"]}
    )
    assert [top(p) for p in as_json.json()["predictions"]] == ["9", "9"]
    raw = await client.post(
        "/v1/models/digits/predict", content=png(0, fmt="JPEG"), headers={"content-type": "image/jpeg"}
    )
    assert raw.status_code == 200 and top(raw.json()["predictions"][0]) == "0"


async def test_options_come_from_query_form_or_body_and_the_body_wins(client: httpx.AsyncClient) -> None:
    url = "/v1/models/photos/predict"
    query = await client.post(
        f"{url}?top_k=2&return_probabilities=true", files={"file": ("a.png", png(255, mode="RGB"))}
    )
    prediction = query.json()["predictions"][0]
    assert [x["label"] for x in prediction["labels"]] == ["j", "i"]
    assert set(prediction["probabilities"]) == set("abcdefghij")
    form = await client.post(url, files={"file": ("a.png", png(255, mode="RGB"))}, data={"top_k": "1"})
    assert (
        len(form.json()["predictions"][0]["labels"]) == 1
        and "probabilities" not in form.json()["predictions"][0]
    )
    body = await client.post(
        f"{url}?top_k=4", json={"image": base64.b64encode(png(0, mode="RGB")).decode(), "top_k": 3}
    )
    assert len(body.json()["predictions"][0]["labels"]) == 3


async def test_conversions_are_reported_in_notes(client: httpx.AsyncClient) -> None:
    frames = [Image.new("L", (28, 28), 255), Image.new("L", (28, 28), 0)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    files = [("file", ("a.gif", gif.getvalue())), ("file", ("b.jpg", png(0, mode="CMYK", fmt="JPEG")))]
    predictions = (await client.post("/v1/models/digits/predict", files=files)).json()["predictions"]
    assert top(predictions[0]) == "9" and "first frame" in " ".join(predictions[0]["notes"])
    assert "CMYK" in " ".join(predictions[1]["notes"])


async def test_concurrent_requests_are_each_answered_from_their_own_image(client: httpx.AsyncClient) -> None:
    levels = np.random.default_rng(7).integers(0, 10, size=24)

    async def ask(level: int) -> str:
        image = png(int(round(level * 255 / 9)))
        response = await client.post("/v1/models/digits/predict", files={"file": ("x.png", image)})
        return top(response.json()["predictions"][0])

    answers = await asyncio.gather(*(ask(int(level)) for level in levels))
    assert answers == [str(level) for level in levels]


@pytest.mark.parametrize(
    ("files", "status", "code", "words"),
    [
        (
            [("file", png(255)), ("file", b"\x89PNG\r\n\x1a\n broken")], 400, "invalid_input",
            "image 1 is not a readable",
        ),
        ([("file", png(255)[:-40])], 400, "invalid_input", "corrupt or truncated"),
        ([("file", b"GIF89a" + b"\xff" * 10)], 400, "invalid_input", "PNG, JPEG, WebP, BMP or GIF"),
        ([("file", b"")], 400, "invalid_input", "empty"),
        ([("file", b"%PDF-1.7 not a picture")], 400, "invalid_input", "PDF file, which is not accepted"),
        (
            [("file", wav(np.zeros(800, dtype=np.float32)))], 400, "invalid_input",
            "WAV audio file, which is not accepted",
        ),
        ([("image", png(255))], 400, "invalid_input", "unknown form fields ['image']"),
        ([("file", png(255))] * 9, 400, "invalid_input", "at most 8"),
    ],
    ids=["not-an-image", "truncated", "garbage-gif", "empty", "pdf", "wav", "wrong-field", "too-many"],
)
async def test_bad_uploads_are_4xx_naming_the_problem(
    client: httpx.AsyncClient, files: list[tuple[str, bytes]], status: int, code: str, words: str
) -> None:
    named = [(field, (f"f{i}.png", data, "image/png")) for i, (field, data) in enumerate(files)]
    assert words in error_of(await client.post("/v1/models/digits/predict", files=named), status, code)


async def test_a_decompression_bomb_is_413(client: httpx.AsyncClient) -> None:
    data = bytearray(png(0, size=(1, 1), mode="1"))
    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 1, 0, 0, 0, 0)
    data[16:29], data[29:33] = ihdr, struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    response = await client.post(
        "/v1/models/digits/predict", content=bytes(data), headers={"content-type": "image/png"}
    )
    assert "pixels" in error_of(response, 413, "payload_too_large")


async def test_a_zero_size_image_is_400_saying_so(client: httpx.AsyncClient) -> None:
    data = bytearray(png(0, size=(1, 1)))
    ihdr = struct.pack(">IIBBBBB", 0, 28, 8, 0, 0, 0, 0)
    data[16:29], data[29:33] = ihdr, struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    response = await client.post(
        "/v1/models/digits/predict", files={"file": ("zero.png", bytes(data), "image/png")}
    )
    assert "zero size (0x28 pixels)" in error_of(response, 400, "invalid_input")


@pytest.mark.parametrize(
    ("url", "body", "status", "code", "words"),
    [
        ("digits", {"images": "AAAA"}, 422, "invalid_request", "images: Input should be a valid list"),
        ("digits", {"image": "AAAA", "top_k": "three"}, 422, "invalid_request", "top_k"),
        (
            "digits", {"image": "AAAA", "return_probabilities": "maybe"}, 422, "invalid_request",
            "return_probabilities",
        ),
        ("digits", [{"image": "AAAA"}], 422, "invalid_request", "valid dictionary"),
        ("digits", "null", 422, "invalid_request", "valid dictionary"),
        (
            "digits", {"image": base64.b64encode(b"plain words").decode()}, 400, "invalid_input",
            "not a readable image",
        ),
        ("sentiment", {"texts": "hello"}, 422, "invalid_request", "texts: Input should be a valid list"),
        ("sentiment", {"texts": ["ok", None]}, 422, "invalid_request", "texts.1"),
        ("sentiment", {"text": "hi", "texts": ["hi"]}, 422, "invalid_request", "exactly one of 'text'"),
        ("speech", {"audio": 5}, 422, "invalid_request", "audio"),
        ("speech", {"recording": "AAAA"}, 422, "invalid_request", "recording"),
        (
            "speech", {"audio": base64.b64encode(b"no sound here").decode()}, 400, "invalid_input",
            "not readable",
        ),
        ("speech/predict?top_k=0", {"audio": "AAAA"}, 422, "invalid_request", "top_k"),
        (
            "sentiment/predict?return_probabilities=perhaps", {"text": "hi"}, 422, "invalid_request",
            "return_probabilities",
        ),
    ],
    ids=[
        "images-not-list", "top-k-string", "flag-string", "array-body", "null-body", "base64-of-text",
        "texts-not-list", "texts-null-item", "both-fields", "audio-number", "unknown-field",
        "base64-of-words", "query-top-k-0", "query-flag",
    ],
)
async def test_json_with_wrong_types_or_fields_is_4xx_naming_them(
    client: httpx.AsyncClient, url: str, body: Any, status: int, code: str, words: str
) -> None:
    target = f"/v1/models/{url}" if "/" in url else f"/v1/models/{url}/predict"
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)  # "null": a JSON body that is null
    response = await client.post(target, content=raw, headers={"content-type": "application/json"})
    assert words in error_of(response, status, code)


async def test_text_bodies_that_are_not_utf8_are_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/sentiment/predict", content=b"caf\xe9", headers={"content-type": "text/plain"}
    )
    assert "not UTF-8" in error_of(response, 400, "invalid_input")


async def test_json_errors_name_the_field(client: httpx.AsyncClient) -> None:
    url = "/v1/models/digits/predict"
    assert "images.0" in error_of(await client.post(url, json={"images": [3]}), 422, "invalid_request")
    assert "exactly one of 'image'" in error_of(await client.post(url, json={}), 422, "invalid_request")
    assert "top_k" in error_of(
        await client.post(url, json={"image": "AAAA", "top_k": 0}), 422, "invalid_request"
    )
    assert "not valid base64" in error_of(await client.post(url, json={"image": "%%%"}), 400, "invalid_input")
    bad_json = await client.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(bad_json, 400, "invalid_input")


async def test_a_content_type_the_task_does_not_take_is_415_listing_those_it_does(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/models/digits/predict", content=b"hi", headers={"content-type": "text/plain"}
    )
    message = error_of(response, 415, "unsupported_media_type")
    assert "text/plain" in message and "multipart/form-data" in message and "image/png" in message
    audio = await client.post(
        "/v1/models/speech/predict", content=png(0), headers={"content-type": "image/png"}
    )
    assert "audio/wav" in error_of(audio, 415, "unsupported_media_type")


# ---- models, versions, no task ------------------------------------------------------------------------


async def test_unknown_models_and_versions_are_404(client: httpx.AsyncClient) -> None:
    files = {"file": ("a.png", png(0))}
    error_of(await client.post("/v1/models/nope/predict", files=files), 404, "model_not_found")
    error_of(await client.post("/v1/models/digits/versions/7/predict", files=files), 404, "model_not_found")
    ok = await client.post("/v1/models/digits/versions/1/predict", files=files)
    assert ok.status_code == 200 and ok.json()["version"] == "1"


async def test_a_model_without_a_task_points_to_v2_infer(client: httpx.AsyncClient) -> None:
    message = error_of(
        await client.post("/v1/models/plain/predict", json={"text": "x"}), 400, "invalid_input"
    )
    assert "no `task` section" in message and "/v2/models/plain/infer" in message


async def test_model_list_has_tasks_labels_inputs_and_examples(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert models["digits"]["task"] == "image-classification" and "28x28 L" in models["digits"]["input"]
    assert "curl -F file=@image.png" in models["digits"]["example_curl"]
    assert models["sentiment"]["labels"] == ["zero", "one", "two"]
    assert models["sentiment"]["example_json"] == {"text": "what a lovely day"}
    assert "return_timestamps=true" in models["speech"]["example_curl"]
    assert models["plain"]["task"] is None and "/v2/models/plain/infer" in models["plain"]["input"]
    one = await client.get("/v1/models/speech")
    assert one.json()["task"] == "speech-recognition"
    error_of(await client.get("/v1/models/nope"), 404, "model_not_found")


async def test_the_example_bodies_in_the_model_list_really_work(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()["models"]
    tasks = set()
    for model in models:
        if model["task"] is None:
            continue
        tasks.add(model["task"])
        response = await client.post(
            model["predict_url"].removeprefix("http://deepserve"), json=model["example_json"]
        )
        assert response.status_code == 200, (model["name"], response.text)
    assert tasks == {"image-classification", "text-classification", "embedding", "speech-recognition",
                     "audio-classification"}
    strict = next(m for m in models if m["name"] == "strict")  # refuses texts over 2 tokens
    assert strict["example_json"] == {"text": "what a"} and '"what a"' in strict["example_curl"]


async def test_openapi_declares_multipart_files_and_json_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
    files = body["multipart/form-data"]["schema"]["properties"]["file"]
    assert files["type"] == "array" and files["items"]["format"] == "binary"
    assert {"image", "text", "texts", "audio"} <= set(body["application/json"]["examples"])
    assert {"audio/wav", "image/png", "text/plain"} <= set(body)
    assert "/v1/models/{name}/versions/{version}/predict" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_the_openapi_audio_example_decodes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    example = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
    response = await client.post("/v1/models/speech/predict", json=example["examples"]["audio"]["value"])
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["text"] == ""  # silence


# ---- text ---------------------------------------------------------------------------------------------


def text_class(text: str) -> str:
    return ["zero", "one", "two"][sum(token_ids(text)) % 3]


async def test_texts_as_json_or_plain_text_get_their_labels(client: httpx.AsyncClient) -> None:
    texts = ["hello world", "what a lovely day", "good night", "awful"]
    response = await client.post(
        "/v1/models/sentiment/predict", json={"texts": texts, "return_probabilities": True}
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [top(p) for p in predictions] == [text_class(t) for t in texts]
    assert predictions[1]["tokens"] == 4 and predictions[1]["truncated"] is False
    assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1.0)
    plain = await client.post("/v1/models/sentiment/predict?top_k=1", content=b"good night",
                              headers={"content-type": "text/plain; charset=utf-8"})
    assert [x["label"] for x in plain.json()["predictions"][0]["labels"]] == [text_class("good night")]


async def test_concurrent_texts_of_different_lengths_are_padded_and_each_right(
    client: httpx.AsyncClient,
) -> None:
    words = ["hello", "world", "good", "bad", "day", "night", "lovely"]
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 12, size=20)]

    async def ask(text: str) -> str:
        return top(
            (await client.post("/v1/models/sentiment/predict", json={"text": text})).json()["predictions"][0]
        )

    assert await asyncio.gather(*(ask(t) for t in texts)) == [text_class(t) for t in texts]


async def test_long_texts_are_truncated_or_refused_as_configured(client: httpx.AsyncClient) -> None:
    tags = await client.post("/v1/models/tags/predict", json={"text": "HELLO World good"})
    prediction = tags.json()["predictions"][0]
    assert prediction["truncated"] is True and prediction["tokens"] == 2
    assert top(prediction) == text_class("hello world")  # lower-cased, then cut to two tokens
    # multi-label: an independent sigmoid per label, not a softmax. The model's best logit is 0, so its
    # score is sigmoid(0) = 0.5 where a softmax would give ~1.0; the scores need not sum to 1.
    assert prediction["labels"][0]["score"] == pytest.approx(0.5)
    assert sum(x["score"] for x in prediction["labels"]) == pytest.approx(0.5)
    refused = await client.post("/v1/models/strict/predict", json={"text": "hello world good"})
    assert "at most 2 tokens" in error_of(refused, 400, "invalid_input")


@pytest.mark.parametrize(("body", "status", "code", "words"), [
    ({"text": ""}, 400, "invalid_input", "text 0 is empty"),
    ({"texts": ["ok", "  \n "]}, 400, "invalid_input", "text 1 is empty or whitespace"),
    ({"texts": []}, 422, "invalid_request", "'texts' is empty"),
    ({"text": 5}, 422, "invalid_request", "text"),
    ({"txt": "hello"}, 422, "invalid_request", "txt"),
    ({"text": "x" * 100_001}, 413, "payload_too_large", "characters"),
], ids=["empty", "whitespace", "no-texts", "number", "typo", "huge"])
async def test_bad_texts_are_4xx(client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str,
                                 words: str) -> None:
    assert words in error_of(await client.post("/v1/models/sentiment/predict", json=body), status, code)


async def test_embeddings_are_mean_pooled_normalised_and_batch_invariant(client: httpx.AsyncClient) -> None:
    texts = ["hello world", "good"]
    response = await client.post("/v1/models/embedder/predict", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    table = embedding_table()
    for text, vector in zip(texts, body["embeddings"], strict=True):
        expected = table[token_ids(text)].mean(axis=0)
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-5)
    single = await client.post("/v1/models/embedder/predict", json={"text": "good"})
    np.testing.assert_allclose(single.json()["embeddings"][0], body["embeddings"][1], rtol=1e-6)
    assert body["dimensions"] == 4 and body["truncated"] == [False, False]


# ---- audio --------------------------------------------------------------------------------------------


async def test_a_raw_wav_body_is_transcribed_with_timestamps(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/speech/predict?return_timestamps=true",
        content=wav(spell("abc de")),
        headers={"content-type": "audio/wav"},
    )
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["text"] == "abc de" and prediction["confidence"] > 0.9
    assert [w["text"] for w in prediction["words"]] == ["abc", "de"]
    assert prediction["words"][0]["start_s"] == pytest.approx(0.0) and prediction["words"][1]["start_s"] > 0.2
    assert [c["text"] for c in prediction["chars"]][:3] == ["a", "b", "c"]


async def test_flac_stereo_at_44k_is_resampled_down_mixed_and_transcribed(client: httpx.AsyncClient) -> None:
    import soxr
    mono = soxr.resample(spell("bad", frames_per_symbol=8), 16000, 44100)
    stereo = np.stack([mono, mono], axis=1)
    files = {"file": ("speech.flac", wav(stereo, 44100, "FLAC", "PCM_24"), "audio/flac")}
    response = await client.post("/v1/models/speech/predict", files=files)
    prediction = response.json()["predictions"][0]
    assert prediction["text"] == "bad" and "words" not in prediction
    notes = " ".join(prediction["notes"])
    assert "44100 Hz" in notes and "2 channels down-mixed" in notes


async def test_json_base64_audio_and_audio_classification(client: httpx.AsyncClient) -> None:
    levels = [np.full(8000, level, dtype=np.float32) for level in (0.0, 0.34, 0.67)]
    body = {"audios": [base64.b64encode(wav(x)).decode() for x in levels], "return_probabilities": True}
    response = await client.post("/v1/models/levels/predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [top(p) for p in predictions] == ["silent", "low", "mid"]
    assert len(predictions[0]["labels"]) == 2 and len(predictions[0]["probabilities"]) == 4


async def test_concurrent_recordings_of_different_lengths_are_each_right(client: httpx.AsyncClient) -> None:
    words = ["a", "bad", "dab", "cab", "bead", "dace", "ace"]

    async def ask(text: str) -> str:
        response = await client.post("/v1/models/speech/predict", content=wav(spell(text)),
                                      headers={"content-type": "application/octet-stream"})
        transcript: str = response.json()["predictions"][0]["text"]
        return transcript

    texts = [" ".join(words[i % len(words)] for i in range(n, n + 1 + n % 3)) for n in range(12)]
    assert await asyncio.gather(*(ask(t) for t in texts)) == texts


@pytest.mark.parametrize(("data", "words"), [
    (b"RIFF....WAVEfmt but not really", "not readable"),
    (wav(np.zeros(0, dtype=np.float32)), "zero-length"),
    (wav(np.zeros(16000 * 4, dtype=np.float32)), "longer than this model's limit of 3 s"),
    (wav(np.array([0.0, np.nan] * 100, dtype=np.float32)), "NaN"),
    (wav(np.zeros(100, dtype=np.float32), rate=7), "7 Hz"),
    (wav(np.zeros((100, 8), dtype=np.float32)), "8 channels; send mono or stereo"),
], ids=["not-audio", "empty", "too-long", "nan", "7hz", "8-channels"])
async def test_bad_recordings_are_400(client: httpx.AsyncClient, data: bytes, words: str) -> None:
    response = await client.post(
        "/v1/models/speech/predict", content=data, headers={"content-type": "audio/x-wav"}
    )
    assert words in error_of(response, 400, "invalid_input")


async def test_an_oversized_body_is_413_before_decoding(repo: Path, app_client: AppClient) -> None:
    write_speech_model(repo, "speech")
    async with app_client(max_request_bytes=4096, **CPU) as http:
        response = await http.post(
            "/v1/models/speech/predict",
            content=wav(np.zeros(16000, dtype=np.float32)),
            headers={"content-type": "audio/wav"},
        )
        assert "exceeds the limit" in error_of(response, 413, "payload_too_large")
