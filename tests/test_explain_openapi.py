"""Schemathesis against the explain routes of the real app (the /v1 fixture of test_task_openapi.py: image,
text, speech, audio-classification, embedding and task-less models): no 5xx, answers as documented, for
every declared body and for schema-invalid requests."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_task_openapi import CHECKS, api_schema  # noqa: F401  # api_schema is the module's fixture

EXPLAIN, EXPLAIN_VERSION = "/v1/models/{name}/explain", "/v1/models/{name}/versions/{version}/explain"
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
BODIES = ["multipart/form-data", "application/json", "text/plain", "image/png", "audio/wav"]
RUNS = [
    *[(EXPLAIN, POSITIVE, media) for media in BODIES],
    (EXPLAIN, NEGATIVE, None), (EXPLAIN_VERSION, POSITIVE, None), (EXPLAIN_VERSION, NEGATIVE, None),
]
SEEN: Counter[tuple[str, int]] = Counter()
RAN: set[tuple[str, schemathesis.GenerationMode, str | None]] = set()
"""The RUNS explored so far in this session (a `-k` selection or a single test runs only some)."""


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def explore(
    api_schema: schemathesis.BaseSchema,  # noqa: F811
    path: str, mode: schemathesis.GenerationMode, media: str | None, data: st.DataObject,
) -> None:
    """Generated requests for one operation; `call_and_validate` raises on any failed check."""
    case = data.draw(api_schema[path]["POST"].as_strategy(generation_mode=mode, media_type=media))
    response = case.call_and_validate(checks=CHECKS)
    SEEN[(case.operation.label, response.status_code)] += 1


@pytest.mark.parametrize(
    ("path", "mode", "media"), RUNS, ids=[f"{p} {g.value} {b or 'any body'}" for p, g, b in RUNS]
)
def test_explain_never_fails_with_5xx_and_answers_as_documented(
    api_schema: schemathesis.BaseSchema,  # noqa: F811
    path: str, mode: schemathesis.GenerationMode, media: str | None,
) -> None:
    explore(api_schema, path, mode, media)
    RAN.add((path, mode, media))


def test_the_run_reached_the_explainers(api_schema: schemathesis.BaseSchema) -> None:  # noqa: F811
    """Run alone (or after a `-k` selection), it explores the RUNS the session has not."""
    for run in RUNS:
        if run not in RAN:
            explore(api_schema, *run)
            RAN.add(run)
    assert any(status == 400 for _, status in SEEN), SEEN
    assert sum(SEEN.values()) >= 60, SEEN
