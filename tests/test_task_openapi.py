"""Schemathesis against the real app's /openapi.json, /v1 task routes: no 5xx, answers as documented.

The document is the one the app serves, with one change: the `name` and `version` path parameters
get an `enum` of the models in the test repository (and one unknown name), so generated requests
reach the real decoders and models instead of stopping at 404. Schemathesis drives the app in
process (its ASGI transport enters the app's lifespan once and keeps it for the module).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_models import classifier_model, write_model
from schemathesis import checks
from schemathesis.python.asgi import shutdown_lifespans
from task_models import (
    write_audio_classifier,
    write_embedding_model,
    write_image_model,
    write_speech_model,
    write_text_model,
)

from service.app import create_app
from service.settings import Settings

MODELS = ["digits", "photos", "sentiment", "strict", "embedder", "speech", "levels", "plain"]
CHECKS = [
    checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
    checks.response_schema_conformance, checks.response_headers_conformance, checks.negative_data_rejection,
]
"""No 5xx, no undocumented status, content type, body or header; schema-invalid input is refused (4xx).
Not `positive_data_acceptance`: a schema-valid string is rarely a real image, and a 400 is right then."""
SEEN: Counter[tuple[str, int]] = Counter()
"""(operation, status) of every generated request, to show the run reached the models."""
Run = tuple[str, str, schemathesis.GenerationMode, str | None]
RAN: set[Run] = set()
"""The RUNS explored so far in this session (a `-k` selection or a single test runs only some)."""


def _pin_path_parameters(doc: dict[str, Any]) -> dict[str, Any]:
    for path, item in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name":
                    parameter["schema"] = {"type": "string", "enum": [*MODELS, "nope"]}
                elif parameter["in"] == "path" and parameter["name"] == "version":
                    parameter["schema"] = {"type": "string", "enum": ["1", "2"]}
    return doc


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    repo: Path = tmp_path_factory.mktemp("repo")
    write_image_model(repo, "digits", max_batch_size=4)
    write_image_model(repo, "photos", channels=3, size=16, task={"resize": "pad"})
    write_text_model(repo, "sentiment")
    write_text_model(repo, "strict", task={"max_length": 2, "truncation": "refuse"})
    write_embedding_model(repo, "embedder")
    write_speech_model(repo, "speech", task={"max_duration_s": 2})
    write_audio_classifier(repo, "levels")
    write_model(repo, "plain", classifier_model())
    app = create_app(
        Settings(model_repository=repo, providers=["CPUExecutionProvider"], max_request_bytes=1 << 20)
    )
    schema = schemathesis.openapi.from_dict(_pin_path_parameters(app.openapi()))
    schema.app = app  # what `from_asgi` sets: requests go to the app in process
    yield schema.include(path_regex="^/v1/")
    shutdown_lifespans()  # stop the batchers schemathesis's lifespan started


POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
PREDICT, PREDICT_VERSION = "/v1/models/{name}/predict", "/v1/models/{name}/versions/{version}/predict"
BODIES = [
    "multipart/form-data", "application/json", "text/plain", "image/png", "audio/wav",
    "application/octet-stream",
]
RUNS = [
    *[(PREDICT, "POST", POSITIVE, media) for media in BODIES],  # every declared body reaches a decoder
    (PREDICT, "POST", NEGATIVE, None),
    (PREDICT_VERSION, "POST", POSITIVE, None),
    (PREDICT_VERSION, "POST", NEGATIVE, None),
    ("/v1/models/{name}", "GET", POSITIVE, None),
    ("/v1/models/{name}", "GET", NEGATIVE, None),
    ("/v1/models", "GET", POSITIVE, None),  # no parameters, so nothing to make invalid
]


# `schemathesis.pytest.from_fixture(...).parametrize()` reads `request.node._nodeid`, which pytest 9
# no longer has (schemathesis 4.32 `pytest/lazy.py`); drawing each operation's `as_strategy()` inside
# a hypothesis test is the other documented way and needs no app at import time.
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def explore(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: schemathesis.GenerationMode,
    media: str | None, data: st.DataObject,
) -> None:
    """Generated requests for one operation; `call_and_validate` raises on any failed check."""
    case = data.draw(api_schema[path][method].as_strategy(generation_mode=mode, media_type=media))
    response = case.call_and_validate(checks=CHECKS)
    SEEN[(case.operation.label, response.status_code)] += 1


@pytest.mark.parametrize(("path", "method", "mode", "media"), RUNS,
                         ids=[f"{m} {p} {g.value} {b or 'any body'}" for p, m, g, b in RUNS])
def test_v1_routes_never_fail_with_5xx_and_answer_as_documented(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: schemathesis.GenerationMode,
    media: str | None,
) -> None:
    explore(api_schema, path, method, mode, media)
    RAN.add((path, method, mode, media))


def test_the_run_reached_the_models(api_schema: schemathesis.BaseSchema) -> None:
    """Guards against a run that only ever met 404s or schema errors. Run alone (or after a `-k`
    selection), it explores the RUNS the session has not, so it never depends on the other tests."""
    for run in RUNS:
        if run not in RAN:
            explore(api_schema, *run)
            RAN.add(run)
    ok = {label for (label, status), count in SEEN.items() if status == 200 and count}
    assert any("/predict" in label for label in ok), SEEN
    assert "GET /v1/models" in ok, SEEN
    assert sum(SEEN.values()) >= 100, SEEN

