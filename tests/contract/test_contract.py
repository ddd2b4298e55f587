"""The repository ships its own copy of the external contract (contract/), and that copy is the
fixed one: byte-equal to ../shared/contract wherever that folder sits beside the repository."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.conftest import CONTRACT, SHARED_CONTRACT

FILES = ["README.md", "event.schema.json", "score.schema.json", "example_trace.jsonl"]


@pytest.mark.shared_contract
@pytest.mark.parametrize("name", FILES)
def test_copy_is_byte_equal_to_the_shared_contract(name: str) -> None:
    assert (CONTRACT / name).read_bytes() == (SHARED_CONTRACT / name).read_bytes(), f"contract/{name} differs from {SHARED_CONTRACT / name}: copy it over"


@pytest.mark.shared_contract
def test_every_shared_contract_file_is_shipped() -> None:
    assert {p.name for p in SHARED_CONTRACT.iterdir()} <= {p.name for p in CONTRACT.iterdir()}


@pytest.mark.parametrize("name", [n for n in FILES if n.endswith(".schema.json")])
def test_schema_is_a_valid_json_schema(name: str) -> None:
    schema = json.loads((CONTRACT / name).read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_example_trace_satisfies_the_event_schema(event_schema: dict) -> None:
    lines = (CONTRACT / "example_trace.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines
    for line in lines:
        jsonschema.validate(json.loads(line), event_schema)
