"""Paying business customers on traffic Moat's simulator did not make: the shipped bundle must
never block one. Replays the business accounts of the external `dev-spread` trace (a templated
document pipeline, app backends serving many end users, benchmark runners) together with every
other account behind their address blocks, in time order, as `moat replay` would; the labels are
read for the verdict only."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict

import pytest

from moat.models.events import Event
from moat.models.summary import ip_prefix
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import SHARED_DATA

BUSINESS = ("app-backend", "doc-pipeline", "benchmark-runner")


@pytest.mark.shared_data
def test_no_benign_business_account_is_blocked_by_the_shipped_bundle() -> None:
    with gzip.open(SHARED_DATA / "external" / "dev-spread.jsonl.gz", "rt", encoding="utf-8") as fh:
        trace = [json.loads(line) for line in fh]
    business = {e["account_id"]: e["family"] for e in trace if e["label"] == 0 and e["family"] in BUSINESS}
    blocks = {ip_prefix(e.get("client_ip")) for e in trace if e["account_id"] in business}
    events = [Event.model_validate(e) for e in trace if e["account_id"] in business or ip_prefix(e.get("client_ip")) in blocks]
    assert {f for f in business.values()} == set(BUSINESS), "the slice must hold every business family"
    blocked: dict[str, list[str]] = defaultdict(list)
    for event, score in zip(events, Scorer(ServingSettings()).score_stream(events)):
        if event.account_id in business and score.action == "block" and event.account_id not in blocked[business[event.account_id]]:
            blocked[business[event.account_id]].append(event.account_id)
    assert not blocked, f"benign business accounts blocked: {dict(blocked)}"
