"""The Scorer: state store -> features -> ONNX -> policy. One instance serves both the BentoML
service and `moat replay`, so what evaluation measures is what production runs."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from models.bundle import Thresholds, load_bundle
from models.events import Event
from models.featurizer import Featurizer, Step
from models.features import N_FEATURES, N_TOKENS
from models.state import StateStore, StoreUnavailable
from serving.bundle_source import resolve_model
from serving.policy import Policy, ScopeRisk
from serving.reasons import reasons
from serving.settings import ServingSettings
from serving.state import open_store
from serving.state.memory import MemoryStore

log = logging.getLogger(__name__)
ONNX_CHUNK = 256  # scope windows per network call in batched scoring


class Score(BaseModel):
    """Mirrors ../shared/contract/score.schema.json, plus optional fields the contract allows."""

    request_id: str
    risk: float
    action: str
    reasons: list[str]
    model_version: str
    scope: str | None = None
    shadow_action: str | None = None


@dataclass
class Counters:
    scored: int = 0
    store_fallbacks: int = 0


class Scorer:
    def __init__(self, settings: ServingSettings | None = None, store: StateStore | None = None, bundle: Path | None = None) -> None:
        self.settings = settings or ServingSettings()
        s = self.settings
        bundle_dir = bundle or resolve_model(s.model)
        self.meta, onnx_path = load_bundle(bundle_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.onnx_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        t = self.meta.thresholds
        thresholds = Thresholds(
            throttle=s.throttle_threshold if s.throttle_threshold is not None else t.throttle,
            perturb=s.perturb_threshold if s.perturb_threshold is not None else t.perturb,
            block=s.block_threshold if s.block_threshold is not None else t.block,
        )
        self.policy = Policy(thresholds, s.cooldown_s, shadow=s.mode == "shadow", corroboration=s.corroboration)
        self.store = store or open_store(s.state, **self._store_options())
        self.featurizer = Featurizer(self.store)
        # Local state used for a request when the shared store fails: degrade, never fail.
        self.local = MemoryStore(max_scopes=s.max_scopes, ttl_s=s.scope_ttl_s)
        self.local_featurizer = Featurizer(self.local)
        self.temperature = self.meta.calibration.temperature
        self.counters = Counters()

    def _store_options(self) -> dict[str, Any]:
        s = self.settings
        if s.state == "memory":
            return {"max_scopes": s.max_scopes, "ttl_s": s.scope_ttl_s}
        return {"ttl_s": s.scope_ttl_s, "timeout_s": s.redis_timeout_s, "retry_s": s.redis_retry_s}

    @property
    def model_version(self) -> str:
        return self.meta.model_version

    def _step(self, event: Event) -> tuple[Step, StateStore]:
        try:
            return self.featurizer.step(event), self.store
        except StoreUnavailable as exc:
            self.counters.store_fallbacks += 1
            log.warning("state store %s unavailable (%s); scoring request %s on local state", self.store.name, exc, event.request_id)
            return self.local_featurizer.step(event), self.local

    def _risks(self, steps: list[Step]) -> list[np.ndarray]:
        """Calibrated risk of every scope window of every step, in one ONNX call per chunk."""
        wins = [w for st in steps for w in st.windows]
        logits = np.empty(len(wins), dtype=np.float64)
        for a in range(0, len(wins), ONNX_CHUNK):
            chunk = wins[a : a + ONNX_CHUNK]
            t = max(len(w.feats) for w in chunk)
            feats = np.zeros((len(chunk), t, N_FEATURES), dtype=np.float32)
            tokens = np.zeros((len(chunk), t, N_TOKENS), dtype=np.int64)
            mask = np.zeros((len(chunk), t), dtype=np.float32)
            for i, w in enumerate(chunk):
                n = len(w.feats)
                feats[i, :n], tokens[i, :n], mask[i, :n] = w.feats, w.tokens, 1.0
            out = self.session.run(["logits"], {"feats": feats, "tokens": tokens, "mask": mask})[0]
            logits[a : a + len(chunk)] = out[np.arange(len(chunk)), [len(w.feats) - 1 for w in chunk]]
        risks = 1.0 / (1.0 + np.exp(-np.clip(logits / self.temperature, -60, 60)))
        out_list, i = [], 0
        for st in steps:
            out_list.append(risks[i : i + len(st.windows)])
            i += len(st.windows)
        return out_list

    def score(self, event: Event) -> Score:
        return self.score_many([event])[0]

    def score_many(self, events: list[Event]) -> list[Score]:
        """Score events in order: featurise each, run the network once for all, then apply the
        policy event by event (holds are read at policy time, so this equals one at a time)."""
        stepped = [self._step(e) for e in events]
        risks = self._risks([st for st, _ in stepped])
        return [self._decide(e, st, store, r) for e, (st, store), r in zip(events, stepped, risks)]

    def score_stream(self, events: Iterable[Event | None], chunk: int = 128) -> Iterator[Score | None]:
        """Score a long stream in order, overlapping the network run of one chunk with the
        featurisation of the next (two threads; onnxruntime releases the GIL). None items pass
        through as None, so a caller can keep placeholders for invalid input in line."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for items in _chunks(events, chunk):
                valid = [e for e in items if e is not None]
                stepped = [self._step(e) for e in valid]
                fut = pool.submit(self._risks, [st for st, _ in stepped])
                if pending is not None:
                    yield from self._finish(*pending)
                pending = (items, stepped, fut)
            if pending is not None:
                yield from self._finish(*pending)

    def _finish(self, items: list[Event | None], stepped: list[tuple[Step, StateStore]], fut: Future) -> Iterator[Score | None]:
        risks = iter(fut.result())
        steps = iter(stepped)
        for e in items:
            if e is None:
                yield None
            else:
                st, store = next(steps)
                yield self._decide(e, st, store, next(risks))

    def _decide(self, event: Event, step: Step, store: StateStore, risks: np.ndarray) -> Score:
        keys = [(w.scope, w.key) for w in step.windows]
        try:
            holds = store.get_holds(keys)
        except StoreUnavailable as exc:
            self.counters.store_fallbacks += 1
            log.warning("could not read holds for request %s: %s", event.request_id, exc)
            holds = self.local.get_holds(keys)
        scopes = [ScopeRisk(w.scope, w.key, float(r), h, u) for w, r, (h, u) in zip(step.windows, risks, holds)]
        d = self.policy.decide(scopes, step.summary.ts)
        for scope, key, level, until in d.new_holds:
            try:
                store.set_hold(scope, key, level, until)
            except StoreUnavailable as exc:
                self.counters.store_fallbacks += 1
                log.warning("could not record hold for %s %s: %s", scope, key, exc)
        self.counters.scored += 1
        driver = next(w for w in step.windows if w.scope == d.scope and w.key == d.key)
        why = reasons(driver.feats[-1], len(driver.feats), d.scope) if d.would_be != "allow" else []
        # Every field is built here from validated values: skip re-validation on the hot path.
        return Score.model_construct(
            request_id=event.request_id,
            risk=round(min(max(d.risk, 0.0), 1.0), 6),
            action=d.action,
            reasons=why,
            model_version=self.model_version,
            scope=d.scope,
            shadow_action=d.would_be if self.policy.shadow else None,
        )

    def score_raw(self, raw: Any) -> Score:
        """Validate then score; raises pydantic.ValidationError (naming the field) before any
        state is touched."""
        return self.score(Event.model_validate(raw))

    def state_size(self) -> int:
        return self.store.size()




def _chunks(items: Iterable[Event | None], size: int) -> Iterator[list[Event | None]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
