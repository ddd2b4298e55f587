"""Prometheus metrics of the service, exported on BentoML's /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import bentoml

if TYPE_CHECKING:
    from moat.serving.scorer import Score, Scorer

ERROR_KINDS = ("invalid", "bad_json", "too_large", "internal", "timeout", "framing", "media_type")
SHED_ROUTES = ("score", "batch")
STATE_SIZE_EVERY = 100
# Calls per network batch of the single-call path (service.SingleCalls): up to MOAT_COALESCE
# (32 by default; the GPU tier's micro-batcher takes a few hundred).
COALESCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Millisecond-scale buckets (in seconds): the service should answer in about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.requests = bentoml.metrics.Counter(name="moat_requests", documentation="scored request events", labelnames=["action"])
        self.latency = bentoml.metrics.Histogram(name="moat_score_latency_seconds", documentation="time to parse and score one call", buckets=LATENCY_BUCKETS)
        self.errors = bentoml.metrics.Counter(name="moat_errors", documentation="rejected or failed calls", labelnames=["kind"])
        self.state_size = bentoml.metrics.Gauge(name="moat_state_scopes", documentation="scopes held by the state store")
        self.fallbacks = bentoml.metrics.Gauge(name="moat_state_fallbacks", documentation="requests scored on local state because the shared store failed")
        self.model = bentoml.metrics.Gauge(name="moat_model_info", documentation="loaded model version", labelnames=["version"])
        # Exported as moat_shed_total: /score calls answered allow (moat_overloaded) and batches
        # answered 429 because too many were already waiting for the scorer.
        self.sheds = bentoml.metrics.Counter(name="moat_shed", documentation="calls shed unscored because the scorer's queue was full", labelnames=["route"])
        # How many /score calls each network batch of the single-call path held: 1 on an idle
        # service, more when calls queue (service.SingleCalls); a rising share above 1 is load.
        self.together = bentoml.metrics.Histogram(name="moat_score_calls_together", documentation="/score calls scored together in one network batch", buckets=COALESCE_BUCKETS)
        # Create every labelled series at zero, so dashboards and alerts see them from the start.
        for action in ("allow", "throttle", "perturb", "block"):
            self.requests.labels(action=action)
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        for route in SHED_ROUTES:
            self.sheds.labels(route=route)
        self._calls = 0

    def model_loaded(self, version: str) -> None:
        self.model.labels(version=version).set(1)

    def observe(self, scores: list["Score"], seconds: float, scorer: "Scorer") -> None:
        self.latency.observe(seconds)
        for s in scores:
            self.requests.labels(action=s.shadow_action or s.action).inc()
        self.fallbacks.set(scorer.counters.store_fallbacks)
        self._calls += 1
        if self._calls % STATE_SIZE_EVERY == 1:
            # The size of a shared store is a network round trip: sample it, not every request.
            self.state_size.set(scorer.state_size())

    def scored_together(self, calls: int) -> None:
        self.together.observe(calls)

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def shed(self, route: str) -> None:
        self.sheds.labels(route=route).inc()
