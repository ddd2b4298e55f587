"""schemathesis against the OpenAPI document a real `moat serve` publishes (/docs.json).

Valid and invalid bodies (schemathesis' positive and negative modes) are generated for /score
and /score/batch from the published schemas: no answer may be a 5xx, and every 200 must satisfy
contract/score.schema.json without failing open. 4 x 300 = 1,200 calls, derandomized so that a
run is repeatable. The operations' hypothesis strategies are driven directly: schemathesis'
pytest loader (`from_fixture`) does not run under pytest 9.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from moat.serving.fail_open import MOAT_ERROR
from tests.conftest import CONTRACT

SCORE = jsonschema.Draft202012Validator(json.loads((CONTRACT / "score.schema.json").read_text()))
EXAMPLES = 300  # per operation and mode: 1,200 calls in all


@pytest.fixture(scope="module")
def api_schema(service_url: str) -> schemathesis.BaseSchema:
    doc = httpx.get(service_url + "/docs.json", timeout=10).json()
    missing = {"/score", "/score/batch"} - set(doc["paths"])
    assert not missing, f"/docs.json does not publish {sorted(missing)}"
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=service_url)
    return schema


def check_answer(case: schemathesis.Case, response: schemathesis.Response) -> None:
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code != 200:
        return
    body: Any = response.json()
    for score in body if isinstance(body, list) else [body]:
        errors = [e.message for e in SCORE.iter_errors(score)]
        assert not errors, f"a 200 breaks contract/score.schema.json: {errors[:3]} in {score}"
        assert MOAT_ERROR not in score["reasons"], f"an event the service accepted failed open: {score}"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("path", ["/score", "/score/batch"])
def test_published_api(api_schema: schemathesis.BaseSchema, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path]["POST"]
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call(timeout=30)
        calls.append(response.status_code)
        check_answer(case, response)

    run()
    # Hypothesis stops early only when it has run out of distinct inputs; these schemas have plenty.
    assert len(calls) >= EXAMPLES, len(calls)
    if mode is GenerationMode.POSITIVE:
        assert calls.count(200) > len(calls) // 2, "most schema-valid bodies should be scored"
