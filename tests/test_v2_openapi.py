"""Schemathesis against the real app's /openapi.json, /v2 and /metrics: no 5xx, answers as documented.

The document is the one the app serves, with one change: the `name` and `version` path parameters
get an `enum` of the models in the test repository (and one unknown name), so generated requests
reach the real decoders and models instead of stopping at 404. Load and unload mutate the registry,
so they only ever name `spare` (a model nothing else uses), `broken` (whose reload fails the same way
every time) or the unknown name: every other answer stays the same however hypothesis orders calls.
Random JSON seldom matches a model's inputs, so one more run sends requests built to be valid
(random sizes and values, JSON or binary inputs, output selections, binary outputs, parameters)
through the same checks, to both infer routes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_models import classifier_model, identity_model, write_model
from schemathesis import checks
from schemathesis.python.asgi import shutdown_lifespans

from service.app import create_app
from service.settings import Settings

IDENT = [("fp32", "FP32"), ("fp16", "FP16"), ("int64", "INT64"), ("uint8", "UINT8"), ("bool", "BOOL"),
         ("bytes", "BYTES")]
"""Inputs of the `ident` model: one Identity per (name, datatype), each [batch, 3]."""
MODELS = ["ident", "clf", "multi", "broken"]
"""Served to infer and metadata; `spare` is only loaded and unloaded."""
REPOSITORY_MODELS = ["spare", "broken"]
CHECKS = [
    checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
    checks.response_schema_conformance, checks.response_headers_conformance, checks.negative_data_rejection,
]
"""No 5xx, no undocumented status, content type, body or header; schema-invalid input is refused (4xx).
Not `positive_data_acceptance`: a schema-valid tensor rarely matches a model's inputs, and 400 is
right then."""
SEEN: Counter[tuple[str, int]] = Counter()
"""(operation, status) of every generated request, to show the run reached the models."""
Run = tuple[str, str, schemathesis.GenerationMode, str | None]
VALID = "valid infer requests"
RAN: set[Run | str] = set()
"""The RUNS (and VALID) explored so far in this session (a `-k` selection or one test runs only some)."""
REPOSITORY_OPERATIONS = ("/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload")
HEADER = "Inference-Header-Content-Length"


def _pin_path_parameters(doc: dict[str, Any]) -> dict[str, Any]:
    for path, item in doc["paths"].items():
        names = REPOSITORY_MODELS if path in REPOSITORY_OPERATIONS else MODELS
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name":
                    parameter["schema"] = {"type": "string", "enum": [*names, "nope"]}
                elif parameter["in"] == "path" and parameter["name"] == "version":
                    parameter["schema"] = {"type": "string", "enum": ["1", "2", "3"]}
    return doc


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    repo: Path = tmp_path_factory.mktemp("repo")
    write_model(repo, "ident", identity_model([(name, datatype, ["batch", 3]) for name, datatype in IDENT]))
    write_model(repo, "clf", classifier_model())  # the docs' example request is for this model
    for version, seed in ((1, 0), (2, 1)):
        write_model(repo, "multi", classifier_model(seed=seed), version=version,
                    config={"version_policy": {"policy": "all"}})
    write_model(repo, "broken", b"this is not an onnx file")
    write_model(repo, "spare", classifier_model(seed=2))
    app = create_app(
        Settings(model_repository=repo, providers=["CPUExecutionProvider"], max_request_bytes=1 << 20)
    )
    schema = schemathesis.openapi.from_dict(_pin_path_parameters(app.openapi()))
    schema.app = app  # what `from_asgi` sets: requests go to the app in process
    yield schema
    shutdown_lifespans()  # stop the batchers schemathesis's lifespan started


def _client_timeout_us(case: schemathesis.Case) -> int:
    """The `parameters.timeout` an infer request set (0 when none), from a JSON body or a binary
    body's header."""
    body = case.body
    if isinstance(body, bytes):
        length = (case.headers or {}).get(HEADER, "")
        try:
            body = orjson.loads(body[:int(length)] if length.isdigit() else body)
        except orjson.JSONDecodeError:
            return 0
    parameters = body.get("parameters") if isinstance(body, dict) else None
    timeout = parameters.get("timeout") if isinstance(parameters, dict) else None
    return timeout if isinstance(timeout, int) and not isinstance(timeout, bool) else 0


def _call_and_validate(case: schemathesis.Case) -> schemathesis.Response:
    """Send the case and run every check; `not_a_server_error` is skipped only for the two 5xx the
    protocol asks for, whose status, content type, body and headers must still be as documented:
    503 for a model that is not ready (`broken` never loads), and 504 when the request set its own
    `parameters.timeout` (a client's budget of a few microseconds really expires on any machine)."""
    response = case.call()
    status = response.status_code
    expected = (status == 503 and (case.path_parameters or {}).get("name") == "broken") or (
        status == 504 and _client_timeout_us(case) > 0)
    excluded = [checks.not_a_server_error] if expected else []
    case.validate_response(response, checks=[c for c in CHECKS if c not in excluded])
    SEEN[(case.operation.label, status)] += 1
    return response


POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
INFER, INFER_VERSION = "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"
OPERATIONS = [
    (INFER, "POST", "application/json"), (INFER, "POST", "application/octet-stream"),
    (INFER_VERSION, "POST", None),
    ("/v2/models/{name}", "GET", None), ("/v2/models/{name}/versions/{version}", "GET", None),
    ("/v2/models/{name}/ready", "GET", None), ("/v2/models/{name}/versions/{version}/ready", "GET", None),
    ("/v2/repository/index", "POST", None), *[(path, "POST", None) for path in REPOSITORY_OPERATIONS],
]
NO_PARAMETERS = [("/v2", "GET"), ("/v2/health/live", "GET"), ("/v2/health/ready", "GET"), ("/metrics", "GET")]
RUNS = [
    *[(path, method, mode, media) for path, method, media in OPERATIONS for mode in (POSITIVE, NEGATIVE)],
    *[(path, method, POSITIVE, None) for path, method in NO_PARAMETERS],  # nothing to make invalid
]


# `schemathesis.pytest.from_fixture(...).parametrize()` reads `request.node._nodeid`, which pytest 9
# no longer has (schemathesis 4.32 `pytest/lazy.py`); drawing each operation's `as_strategy()` inside
# a hypothesis test is the other documented way and needs no app at import time.
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def explore(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: schemathesis.GenerationMode,
    media: str | None, data: st.DataObject,
) -> None:
    """Generated requests for one operation; `_call_and_validate` raises on any failed check."""
    case = data.draw(api_schema[path][method].as_strategy(generation_mode=mode, media_type=media))
    _call_and_validate(case)


@pytest.mark.parametrize(("path", "method", "mode", "media"), RUNS,
                         ids=[f"{m} {p} {g.value} {b or 'any body'}" for p, m, g, b in RUNS])
def test_v2_routes_never_fail_with_5xx_and_answer_as_documented(
    api_schema: schemathesis.BaseSchema, path: str, method: str, mode: schemathesis.GenerationMode,
    media: str | None,
) -> None:
    explore(api_schema, path, method, mode, media)
    RAN.add((path, method, mode, media))


# ---- requests built to be valid ----------------------------------------------------------------------

_LIMITS = {"FP32": 3.0e38, "FP16": 65504.0}
_NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_}


def _elements(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=8)
    if datatype in _LIMITS:
        limit = _LIMITS[datatype]
        return st.floats(-limit, limit, allow_nan=False, allow_infinity=False)
    info = np.iinfo(_NUMPY[datatype])
    return st.integers(int(info.min), int(info.max))


def _raw(datatype: str, data: list[Any]) -> bytes:
    """The binary tensor extension's bytes: little-endian, row-major; BYTES as 4-byte length + UTF-8."""
    if datatype == "BYTES":
        return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in data)
    return np.asarray(data, dtype=np.dtype(_NUMPY[datatype]).newbyteorder("<")).tobytes()


@st.composite
def _valid_request(draw: st.DrawFn, model: str) -> tuple[dict[str, Any], bytes | None]:
    """An infer request `model` accepts, as (JSON header, raw tensor bytes or None when all JSON):
    right names, datatypes and shapes; random sizes, values, encodings, outputs and parameters."""
    items = draw(st.integers(1, 4))
    tensors, width = (IDENT, 3) if model == "ident" else ([("x", "FP32")], 4)  # clf and multi: x [B, 4]
    inputs, blobs = [], []
    for name, datatype in draw(st.permutations(tensors)):
        data = draw(st.lists(_elements(datatype), min_size=items * width, max_size=items * width))
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [items, width]}
        if draw(st.booleans()):
            blobs.append(_raw(datatype, data))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = data
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    outputs = [f"{name}_out" for name, _ in IDENT] if model == "ident" else ["logits"]
    chosen = draw(st.lists(st.sampled_from(outputs), unique=True, max_size=3))
    if chosen:
        header["outputs"] = [
            {"name": name, "parameters": {"binary_data": draw(st.booleans())}} for name in chosen
        ]
    parameters = draw(st.fixed_dictionaries({}, optional={
        "binary_data_output": st.booleans(),
        "timeout": st.one_of(st.just(0), st.integers(1, 50), st.integers(10**7, 2**64 - 1)),
        "priority": st.integers(0, 3),  # unknown to this server: kept and ignored
    }))
    if parameters:
        header["parameters"] = parameters
    if draw(st.booleans()):
        header["id"] = draw(st.text(max_size=8))
    return header, b"".join(blobs) if blobs else None


SERVED = [("ident", None), ("clf", None), ("multi", "1"), ("multi", "2")]
"""(model, version) the valid requests go to; a version sends them to the version's infer route."""


def _case(api_schema: schemathesis.BaseSchema, model: str, version: str | None, header: dict[str, Any],
          raw: bytes | None) -> schemathesis.Case:
    """A case for the infer route: JSON when `raw` is None, else the JSON header then `raw`."""
    operation = api_schema[INFER if version is None else INFER_VERSION]["POST"]
    path = {"name": model} if version is None else {"name": model, "version": version}
    if raw is None:
        return operation.Case(path_parameters=path, body=header, media_type="application/json")
    head = orjson.dumps(header)
    return operation.Case(path_parameters=path, body=head + raw, headers={HEADER: str(len(head))},
                          media_type="application/octet-stream")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def explore_valid(api_schema: schemathesis.BaseSchema, data: st.DataObject) -> None:
    """Valid infer requests to SERVED: each answers 200, or 504 when it set its own short timeout."""
    model, version = data.draw(st.sampled_from(SERVED))
    header, raw = data.draw(_valid_request(model))
    timeout = header.get("parameters", {}).get("timeout", 0)
    response = _call_and_validate(_case(api_schema, model, version, header, raw))
    assert response.status_code == 200 or (response.status_code == 504 and 0 < timeout <= 50), response.text


def test_valid_infer_requests_answer_as_documented(api_schema: schemathesis.BaseSchema) -> None:
    explore_valid(api_schema)
    RAN.add(VALID)


def test_binary_bytes_that_are_not_utf8_are_refused(api_schema: schemathesis.BaseSchema) -> None:
    """ONNX Runtime string tensors hold text: raw BYTES elements that are not UTF-8 used to fail in the
    batch (500, and every request batched with them); now they are a 400 before queueing."""
    inputs = [{"name": name, "datatype": datatype, "shape": [1, 3], "data": [0, 1, 0]}
              for name, datatype in IDENT if datatype != "BYTES"]
    elements = [b"ok", "h\u00e9".encode(), b"\xff\xfe"]
    raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    inputs.append(
        {"name": "bytes", "datatype": "BYTES", "shape": [1, 3], "parameters": {"binary_data_size": len(raw)}}
    )
    response = _call_and_validate(_case(api_schema, "ident", None, {"inputs": inputs}, raw))
    assert response.status_code == 400, response.text
    assert "input 'bytes': BYTES element 2 is not UTF-8 text" in response.json()["error"]


async def test_root_serves_the_try_it_page(api_schema: schemathesis.BaseSchema) -> None:
    """`GET /` is left out of the schema (`include_in_schema=False`), so schemathesis never sends it."""
    transport = httpx.ASGITransport(app=api_schema.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://deepserve") as client:
        response = await client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")


def test_the_run_reached_the_models(api_schema: schemathesis.BaseSchema) -> None:
    """Guards against a run that only ever met 404s or schema errors. Run alone (or after a `-k`
    selection), it explores the RUNS (and VALID) the session has not, so it never depends on the
    other tests."""
    for run in RUNS:
        if run not in RAN:
            explore(api_schema, *run)
            RAN.add(run)
    if VALID not in RAN:
        explore_valid(api_schema)
        RAN.add(VALID)
    ok = {label for (label, status), count in SEEN.items() if status == 200 and count}
    assert {f"POST {INFER}", f"POST {INFER_VERSION}"} <= ok, SEEN
    assert sum(SEEN.values()) >= 100, SEEN
