"""The Scorer: state store -> features -> ONNX -> policy. One instance serves both the BentoML
service and `moat replay`, so what evaluation measures is what production runs."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from moat.models.bundle import Thresholds, load_bundle
from moat.models.bundle_source import resolve_model
from moat.models.calibration import calibrated_risk
from moat.models.events import Event
from moat.models.feature_spec import N_FEATURES, N_TOKENS
from moat.models.featurizer import Featurizer, ScopeWindow, Step
from moat.models.memory_store import MemoryStore
from moat.models.policy import RISK_DECIMALS, Policy, ScopeRisk
from moat.models.state import StateStore, StoreUnavailable
from moat.serving.gate_hints import GateHints
from moat.serving.pack_kernel import pack_kernel
from moat.serving.reasons import floor_level, reasons
from moat.serving.settings import ServingSettings
from moat.serving.state import open_store

log = logging.getLogger(__name__)
T = TypeVar("T")
ONNX_CHUNK = 256  # scope windows per network call in batched scoring


class ModelFault(RuntimeError):
    """The bundle's network gave a non-finite risk for a window that always counts: a broken
    model, not a property of the request."""


class Score(BaseModel):
    """Mirrors contract/score.schema.json, plus optional fields the contract allows."""

    request_id: str
    risk: float
    action: str
    reasons: list[str]
    model_version: str
    scope: str | None = None
    shadow_action: str | None = None


@dataclass(frozen=True)
class Batch:
    """Scope windows padded into network inputs."""

    feats: np.ndarray  # float32[B, T, N_FEATURES]
    tokens: np.ndarray  # int64[B, T, N_TOKENS]
    mask: np.ndarray  # float32[B, T]
    last: np.ndarray  # intp[B]: each window's last real position

    def take(self, rows: np.ndarray) -> "Batch":
        return Batch(self.feats[rows], self.tokens[rows], self.mask[rows], self.last[rows])

    def join(self, other: "Batch") -> "Batch":
        """Both batches in one, padded at the end to the longer length, as `_pack` pads."""
        t = max(self.mask.shape[1], other.mask.shape[1])

        def stack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            out = np.zeros((len(a) + len(b), t, *a.shape[2:]), dtype=a.dtype)  # np.pad costs 50x this
            out[: len(a), : a.shape[1]] = a
            out[len(a) :, : b.shape[1]] = b
            return out

        return Batch(stack(self.feats, other.feats), stack(self.tokens, other.tokens), stack(self.mask, other.mask), np.concatenate([self.last, other.last]))


def _pack(windows: list[ScopeWindow]) -> Batch:
    """The windows padded into network inputs: compiled (`pack_kernel`) where numba is
    installed, else `_pack_reference`, which it equals bit for bit."""
    if len(windows) == 1:
        # A live request's own windows are most often the account's alone: nothing to pad, and
        # numpy's casts (exact from float16 and uint16) cost a third of the kernel's call.
        w = windows[0]
        n = len(w.feats)
        return Batch(w.feats.astype(np.float32)[None], w.tokens.astype(np.int64)[None], np.ones((1, n), dtype=np.float32), np.array([n - 1], dtype=np.intp))
    if not windows:
        return EMPTY_BATCH
    if pack_kernel is None:
        return _pack_reference(windows)
    # One concatenation each instead of a store per window; the kernel pads them.
    feats = np.concatenate([w.feats for w in windows])
    tokens = np.concatenate([w.tokens for w in windows])
    if feats.dtype != np.float16 or tokens.dtype != np.uint16:  # not as stored: the kernel reads bits
        return _pack_reference(windows)
    lengths = np.fromiter([len(w.feats) for w in windows], dtype=np.intp, count=len(windows))
    return Batch(*pack_kernel(feats.view(np.uint16), tokens, lengths, int(lengths.max())))


def _pack_reference(windows: list[ScopeWindow]) -> Batch:
    t = max((len(w.feats) for w in windows), default=1)
    feats = np.zeros((len(windows), t, N_FEATURES), dtype=np.float32)
    tokens = np.zeros((len(windows), t, N_TOKENS), dtype=np.int64)
    mask = np.zeros((len(windows), t), dtype=np.float32)
    last = np.empty(len(windows), dtype=np.intp)
    for i, w in enumerate(windows):
        n = len(w.feats)
        feats[i, :n], tokens[i, :n], mask[i, :n], last[i] = w.feats, w.tokens, 1.0, n - 1
    return Batch(feats, tokens, mask, last)


# Most live requests have no dependent window to pack. Shared, so read-only: an empty batch is
# only read, taken from or joined into new arrays, and a write would fail instead of leaking.
def _read_only(batch: Batch) -> Batch:
    for a in (batch.feats, batch.tokens, batch.mask, batch.last):
        a.setflags(write=False)
    return batch


EMPTY_BATCH = _read_only(_pack_reference([]))


@dataclass(frozen=True)
class Plan:
    """The network inputs of a list of steps: own windows and dependent windows (an address
    block; a key carrying part of its account's traffic), each with the index of its step."""

    own: Batch
    own_event: np.ndarray
    dependent: Batch
    dependent_event: np.ndarray
    steps: list[Step]
    # Per step, which windows mirror the account's (ScopeWindow.mirrors): packed for nobody.
    mirrored: list[tuple[bool, ...]]

    @property
    def n_events(self) -> int:
        return len(self.steps)


@dataclass
class Counters:
    scored: int = 0
    store_fallbacks: int = 0
    clock_replaced: int = 0  # events whose ts was outside the skew bound, scored at server time


class TimeSource(Protocol):
    def stamp(self, ts: float) -> float:
        """The time an event with caller time `ts` is scored at."""
        ...


@dataclass(frozen=True)
class ServerClock:
    """The caller's ts when it is within `skew_s` of this server's clock, else the server's time:
    a caller cannot age a scope past its TTL or its hold, nor rewind it, by more than the skew."""

    skew_s: float
    now: Callable[[], float] = time.time

    def stamp(self, ts: float) -> float:
        now = self.now()
        return ts if now - self.skew_s <= ts <= now + self.skew_s else now  # NaN is outside too


@dataclass(frozen=True)
class CallerClock:
    """The caller's ts as given: for recorded traces, whose times are the record."""

    def stamp(self, ts: float) -> float:
        return ts


TIME_SOURCES: dict[str, Callable[[ServingSettings], TimeSource]] = {
    "server": lambda s: ServerClock(s.max_clock_skew_s),
    "caller": lambda s: CallerClock(),
}


# onnxruntime's CUDA provider runs float32 matrix products in TF32 by default on Ampere and later
# GPUs, which moved a logit by up to 3.4e-3 from the CPU's on an H200 (benchmarks/bench_gpu.py;
# 2.9e-6 with it off). Off: an answer must not depend on which tier scored the request, and this
# network is far too small for TF32 to buy speed.
CUDA_PROVIDER = ("CUDAExecutionProvider", {"use_tf32": "0"})
Provider = str | tuple[str, dict[str, str]]


def provider_name(p: Provider) -> str:
    return p if isinstance(p, str) else p[0]


def execution_providers(choice: str, available: list[str] | None = None) -> list[Provider]:
    """onnxruntime providers for MOAT_ONNX_PROVIDER, CPU always last as the fallback."""
    have = ort.get_available_providers() if available is None else available
    cuda = "CUDAExecutionProvider" in have
    if choice == "cuda" and not cuda:
        raise RuntimeError(f"MOAT_ONNX_PROVIDER=cuda: onnxruntime has no CUDA provider here ({', '.join(have)}); install onnxruntime-gpu or use cpu")
    return [CUDA_PROVIDER, "CPUExecutionProvider"] if choice != "cpu" and cuda else ["CPUExecutionProvider"]


class Scorer:
    def __init__(self, settings: ServingSettings | None = None, store: StateStore | None = None, bundle: Path | None = None, clock: TimeSource | None = None) -> None:
        self.settings = settings or ServingSettings()
        s = self.settings
        bundle_dir = bundle or resolve_model(s.model)
        self.meta, onnx_path = load_bundle(bundle_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.onnx_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = execution_providers(s.onnx_provider)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        wanted = provider_name(providers[0])
        if self.session.get_providers()[0] != wanted:
            # onnxruntime falls back to the CPU when CUDA or cuDNN fails to load.
            if s.onnx_provider == "cuda":
                raise RuntimeError(f"MOAT_ONNX_PROVIDER=cuda: onnxruntime could not start {wanted} (running on {self.session.get_providers()[0]}); check the CUDA and cuDNN libraries")
            log.warning("MOAT_ONNX_PROVIDER=%s: %s did not start; the network runs on %s", s.onnx_provider, wanted, self.session.get_providers()[0])
        t = self.meta.thresholds
        thresholds = Thresholds(
            throttle=s.throttle_threshold if s.throttle_threshold is not None else t.throttle,
            perturb=s.perturb_threshold if s.perturb_threshold is not None else t.perturb,
            block=s.block_threshold if s.block_threshold is not None else t.block,
        )
        corroboration = s.corroboration if s.corroboration is not None else self.meta.calibration.corroboration
        self.policy = Policy(thresholds, s.cooldown_s, shadow=s.mode == "shadow", corroboration=corroboration)
        self.store = store or open_store(s.state, **self._store_options())
        self.featurizer = Featurizer(self.store)
        # Local state used for a request when the shared store fails: degrade, never fail.
        self.local = MemoryStore(max_scopes=s.max_scopes, ttl_s=s.scope_ttl_s, max_templates=s.campaign_max_templates, max_accounts=s.campaign_max_accounts)
        self.clock = clock or TIME_SOURCES[s.time_source](s)
        self.local_featurizer = Featurizer(self.local)
        self.temperature = self.meta.calibration.temperature
        self.counters = Counters()
        # Live calls only (score, score_many): a stream's chunk already shares each network call
        # among hundreds of windows. None turns the guess off (benchmarks compare both).
        self.gate_hints: GateHints | None = GateHints()

    def _store_options(self) -> dict[str, Any]:
        s = self.settings
        if s.state == "memory":
            return {"max_scopes": s.max_scopes, "ttl_s": s.scope_ttl_s, "max_templates": s.campaign_max_templates, "max_accounts": s.campaign_max_accounts}
        secret = s.state_secret.get_secret_value().encode() if s.state_secret is not None else None
        return {"ttl_s": s.scope_ttl_s, "timeout_s": s.redis_timeout_s, "retry_s": s.redis_retry_s, "secret": secret, "cluster": s.redis_cluster, "max_accounts": s.campaign_max_accounts}

    @property
    def model_version(self) -> str:
        return self.meta.model_version

    def _stamp(self, event: Event, clock: TimeSource) -> float | None:
        """The time to score `event` at when the clock replaces its own, else None."""
        ts = clock.stamp(event.ts)
        if ts == event.ts:
            return None
        self.counters.clock_replaced += 1
        return ts

    def _step(self, event: Event, clock: TimeSource | None = None) -> tuple[Step, StateStore]:
        # The time goes to the featurizer beside the event: copying a validated event to
        # re-stamp it cost more than summarising it.
        ts = self._stamp(event, clock or self.clock)
        try:
            return self.featurizer.step(event, ts), self.store
        except StoreUnavailable as exc:
            self.counters.store_fallbacks += 1
            log.warning("state store %s unavailable (%s); scoring request %s on local state", self.store.name, exc, event.request_id)
            return self.local_featurizer.step(event, ts), self.local

    def _plan(self, steps: list[Step]) -> Plan:
        """Pack every step's windows for the network, own and dependent windows apart; a window
        that mirrors its account's is not packed (on dev-spread, four in ten windows)."""
        own, dep, own_ev, dep_ev, mirrored = [], [], [], [], []
        for i, st in enumerate(steps):
            account = st.windows[0]  # the featurizer puts the account scope first
            flags = tuple(w.mirrors(account) for w in st.windows)
            mirrored.append(flags)
            for w, mirror in zip(st.windows, flags):
                if mirror:
                    continue
                if w.dependent:
                    dep.append(w)
                    dep_ev.append(i)
                else:
                    own.append(w)
                    own_ev.append(i)
        return Plan(_pack(own), np.array(own_ev, dtype=np.intp), _pack(dep), np.array(dep_ev, dtype=np.intp), steps, mirrored)

    def _infer(self, plan: Plan, hints: GateHints | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated risk of each own window, then of each dependent window whose request's own
        risk corroborates it; the others stay NaN, since the policy would ignore them anyway.
        With `hints` (the live path), the dependent windows of accounts whose gate opened last
        time ride in the own windows' call; which windows get a risk does not depend on them.
        Pure numpy around the network calls, so it can run beside featurisation in a thread
        (onnxruntime releases the GIL)."""
        if plan.n_events == 1:
            return self._infer_one(plan, hints)
        return self._infer_many(plan, hints)

    def _infer_one(self, plan: Plan, hints: GateHints | None) -> tuple[np.ndarray, np.ndarray]:
        """`_infer_many` for the live path's usual plan, one request: the same calls and the
        same risks, with the gate decided once in Python instead of by a dozen numpy calls on
        arrays of one to three values (about a tenth of a request's time)."""
        n_own, n_dep = len(plan.own_event), len(plan.dependent_event)
        account = plan.steps[0].windows[0].key
        early = n_dep > 0 and hints is not None and hints.expects_open(account)
        if early:
            joint = self._run(plan.own.join(plan.dependent))
            own, guessed = joint[:n_own], joint[n_own:]
        else:
            own = self._run(plan.own)
        # ndarray.max propagates a NaN as maximum.reduceat does: a broken network opens no gate.
        gate_open = bool((own[0] if n_own == 1 else own.max()) >= self.policy.corroboration)
        dep = np.full(n_dep, np.nan)
        if gate_open and n_dep:
            dep[:] = guessed if early else self._run(plan.dependent)
        if hints is not None:
            hints.tally(early, gate_open, n_dep)
            hints.learn([account], [gate_open])
        return own, dep

    def _infer_many(self, plan: Plan, hints: GateHints | None = None) -> tuple[np.ndarray, np.ndarray]:
        n_dep = len(plan.dependent_event)
        early = np.zeros(n_dep, dtype=bool)
        if hints is not None and n_dep:
            early = np.fromiter((hints.expects_open(plan.steps[i].windows[0].key) for i in plan.dependent_event), dtype=bool, count=n_dep)
        if early.any():
            joint = self._run(plan.own.join(plan.dependent.take(early)))
            own, guessed = joint[: len(plan.own_event)], joint[len(plan.own_event) :]
        else:
            own, guessed = self._run(plan.own), np.empty(0)
        own_max = _per_event_max(own, plan.own_event, plan.n_events)
        dep = np.full(n_dep, np.nan)
        need = own_max[plan.dependent_event] >= self.policy.corroboration
        dep[early & need] = guessed[need[early]]
        late = need & ~early
        if late.any():
            dep[late] = self._run(plan.dependent.take(late))
        if hints is not None:
            hints.count(early, need)
            hints.learn([st.windows[0].key for st in plan.steps], (own_max >= self.policy.corroboration).tolist())
        return own, dep

    def _run(self, batch: Batch) -> np.ndarray:
        n = len(batch.last)
        if n == 0:
            return np.empty(0)
        if n <= ONNX_CHUNK:  # one call, as the live path makes: no chunk bookkeeping
            out = self.session.run(["logits"], {"feats": batch.feats, "tokens": batch.tokens, "mask": batch.mask})[0]
            return calibrated_risk(out[np.arange(n), batch.last].astype(np.float64), self.temperature)
        logits = np.empty(n, dtype=np.float64)
        for a in range(0, n, ONNX_CHUNK):
            b = slice(a, a + ONNX_CHUNK)
            out = self.session.run(["logits"], {"feats": batch.feats[b], "tokens": batch.tokens[b], "mask": batch.mask[b]})[0]
            logits[b] = out[np.arange(len(out)), batch.last[b]]
        return calibrated_risk(logits, self.temperature)

    def _unplan(self, plan: Plan, risks: tuple[np.ndarray, np.ndarray]) -> list[list[float]]:
        """Per step, the risk of each of its windows in window order (NaN: not computed). A
        mirrored window has the account window's risk; a dependent one only where the request's
        own risk corroborates it, as `_infer` decides for the windows it runs."""
        own, dep = iter(risks[0].tolist()), iter(risks[1].tolist())
        gate = self.policy.corroboration
        out = []
        for st, flags in zip(plan.steps, plan.mirrored):
            account = next(own)
            rs = [account] + [math.nan if m else next(dep) if w.dependent else next(own) for w, m in zip(st.windows[1:], flags[1:])]
            # The account's window is own and never mirrored; a NaN risk opens no gate, as in _infer.
            mine = [r for w, r, m in zip(st.windows, rs, flags) if not w.dependent and not m]
            own_max = math.nan if any(math.isnan(r) for r in mine) else max(mine)
            for j, m in enumerate(flags):
                if m:
                    rs[j] = account if not st.windows[j].dependent or own_max >= gate else math.nan
            out.append(rs)
        return out

    def score(self, event: Event) -> Score:
        return self.score_many([event])[0]

    def score_many(self, events: list[Event]) -> list[Score]:
        """Score events in order: featurise each, run the network once for all, then apply the
        policy event by event (holds are read at policy time, so this equals one at a time)."""
        stepped = [self._step(e) for e in events]
        plan = self._plan([st for st, _ in stepped])
        risks = self._unplan(plan, self._infer(plan, self.gate_hints))
        return [self._decide(e, st, store, r) for e, (st, store), r in zip(events, stepped, risks)]

    def score_each(self, events: list[Event]) -> list[Score | Exception]:
        """`score_many` for events of unrelated callers (calls queued in the service or the
        gateway paths, serving/coalesce.py): a fault in one event's featurisation or policy is
        that event's alone, in its place in the answer, as if each had been scored on its own.
        A fault of the network call itself concerns every event, and is raised."""
        out: list[Score | Exception | None] = [None] * len(events)
        stepped: list[tuple[int, tuple[Step, StateStore]]] = []
        for i, e in enumerate(events):
            try:
                stepped.append((i, self._step(e)))
            except Exception as exc:  # its caller answers it alone; the others are scored
                out[i] = exc
        plan = self._plan([st for _, (st, _store) in stepped])
        risks = self._unplan(plan, self._infer(plan, self.gate_hints))
        for (i, (st, store)), r in zip(stepped, risks):
            try:
                out[i] = self._decide(events[i], st, store, r)
            except Exception as exc:  # as above
                out[i] = exc
        return out  # type: ignore[return-value]  # every place is filled

    def score_stream(self, events: Iterable[Event | None], chunk: int | None = None, clock: TimeSource | None = None) -> Iterator[Score | None]:
        """Score a long stream in order, overlapping the network run of one chunk with the
        featurisation of the next (two threads; the network thread runs no Python loops, so the
        two barely contend for the GIL). None items pass through as None, so a caller can keep
        placeholders for invalid input in line. Streams are the offline path (replay, evaluation,
        calibration): a recorded trace is scored in its own time (CallerClock) unless `clock`
        says otherwise; the live service scores through `score` and `score_many`."""
        return self._stream(events, chunk or self.settings.replay_chunk, self._decide, clock or CallerClock())

    def own_risk_stream(self, events: Iterable[Event], chunk: int | None = None, clock: TimeSource | None = None) -> Iterator[tuple[Event, float]]:
        """Each event with the risk of its own scopes (the account, a key carrying all of it),
        before any policy: what operator calibration reads. Own risk alone decides whether an
        account is ever acted on or blocked, since dependent scopes act only on accounts whose
        own risk already reached the throttle threshold, and never block."""

        def own(event: Event, step: Step, store: StateStore, risks: list[float]) -> tuple[Event, float]:
            mine = [r for w, r in zip(step.windows, risks) if not w.dependent]
            # A NaN (a broken network) must reach the caller: max() keeps whichever side it met first.
            return event, math.nan if any(math.isnan(r) for r in mine) else max(mine)

        return self._stream(events, chunk or self.settings.replay_chunk, own, clock or CallerClock())  # type: ignore[return-value]

    def score_stepped(self, chunks: Iterable[tuple[list[Any], list[tuple[Step, Any]]]]) -> Iterator[Score | None]:
        """`score_stream` for chunks featurised elsewhere (`moat replay --workers`): each chunk is
        its items (None for an invalid one; anything with a `request_id` otherwise) and a (Step,
        holds) pair per valid item, where `holds` answers `get_holds` and `set_holds` as a state
        store does. The network and the policy run as in `score_stream`, chunk by chunk, so
        chunks of the same events give the same scores."""
        return self._stream_stepped(chunks, self._decide)

    def _stream(self, events: Iterable[Event | None], chunk: int, finish: Callable[[Event, Step, StateStore, list[float]], T], clock: TimeSource | None) -> Iterator[T | None]:
        # A generator: chunk k+1 is featurised while the network runs on chunk k.
        stepped = ((items, [self._step(e, clock) for e in items if e is not None]) for items in _chunks(events, chunk))
        return self._stream_stepped(stepped, finish)

    def _stream_stepped(self, chunks: Iterable[tuple[list[Any], list[tuple[Step, Any]]]], finish: Callable[[Any, Step, Any, list[float]], T]) -> Iterator[T | None]:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for items, stepped in chunks:
                plan = self._plan([st for st, _ in stepped])
                fut = pool.submit(self._infer, plan)
                if pending is not None:
                    yield from self._finish(*pending, finish)
                pending = (items, stepped, plan, fut)
            if pending is not None:
                yield from self._finish(*pending, finish)

    def _finish(self, items: list[Event | None], stepped: list[tuple[Step, StateStore]], plan: Plan, fut: Future, finish: Callable[[Event, Step, StateStore, list[float]], T]) -> Iterator[T | None]:
        risks = iter(self._unplan(plan, fut.result()))
        steps = iter(stepped)
        for e in items:
            if e is None:
                yield None
            else:
                st, store = next(steps)
                yield finish(e, st, store, next(risks))

    def _decide(self, event: Event, step: Step, store: StateStore, risks: list[float]) -> Score:
        # Own windows always run (only dependent ones may be skipped, as NaN): a NaN there would
        # otherwise drop the account's own evidence without a word.
        if any(math.isnan(r) for w, r in zip(step.windows, risks) if not w.dependent):
            raise ModelFault(f"request {event.request_id}: the network gave a non-finite risk for an own scope window; check the bundle ({self.model_version})")
        scored = [(w, r) for w, r in zip(step.windows, risks) if not math.isnan(r)]  # NaN: skipped, uncorroborated
        keys = [(w.scope, w.key) for w, _ in scored]
        try:
            holds = store.get_holds(keys)
        except StoreUnavailable as exc:
            self.counters.store_fallbacks += 1
            log.warning("could not read holds for request %s: %s", event.request_id, exc)
            holds = self.local.get_holds(keys)
        scopes = [ScopeRisk(w.scope, w.key, r, h, u, w.dependent, 0 if w.dependent else floor_level(w.feats[-1], len(w.feats))) for (w, r), (h, u) in zip(scored, holds)]
        d = self.policy.decide(scopes, step.summary.ts)
        if d.new_holds:
            try:
                store.set_holds(d.new_holds)
            except StoreUnavailable as exc:
                self.counters.store_fallbacks += 1
                log.warning("could not record holds for request %s on %s: %s", event.request_id, [(scope, key) for scope, key, *_ in d.new_holds], exc)
        self.counters.scored += 1
        driver = next(w for w in step.windows if w.scope == d.scope and w.key == d.key)
        why = reasons(driver.feats[-1], len(driver.feats), d.scope) if d.would_be != "allow" else []
        # Every field is built here from validated values: skip re-validation on the hot path.
        return Score.model_construct(
            request_id=event.request_id,
            risk=round(min(max(d.risk, 0.0), 1.0), RISK_DECIMALS),
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
        """Scopes (memory) or keys (Redis) held; -1 while the shared store is unavailable."""
        try:
            return self.store.size()
        except StoreUnavailable as exc:
            log.debug("state size not sampled: %s", exc)
            return -1




def _per_event_max(risks: np.ndarray, event: np.ndarray, n_events: int) -> np.ndarray:
    """The highest of each event's own-window risks. Every event has one own window at least
    (its account's), and windows come in event order, so this is a maximum over runs; with one
    window per event (the usual case) the risks themselves. `np.maximum.at` gave the same in
    several times the time."""
    if len(risks) == n_events:
        return risks.astype(np.float64, copy=True)
    starts = np.flatnonzero(np.r_[True, event[1:] != event[:-1]])
    return np.maximum.reduceat(risks, starts).astype(np.float64)


def _chunks(items: Iterable[Event | None], size: int) -> Iterator[list[Event | None]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
