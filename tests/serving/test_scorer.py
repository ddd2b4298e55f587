"""The Scorer: hysteresis, shadow mode, bounded state, batching equals one-at-a-time, and
serving never imports the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import N_FEATURES, N_TOKENS
from moat.models.memory_store import MemoryStore
from moat.models.traces import iter_raw
from moat.serving.replay_cli import replay
from moat.serving.scorer import Batch, Plan, Scorer, _per_event_max, execution_providers
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT, ROOT


def ev(i: int, ts: float, account: str = "acct-1", **extra) -> Event:
    return Event.model_validate({"request_id": f"r{i}", "ts": ts, "account_id": account, "prompt": f"hello {i}", **extra})


def test_hold_outlasts_low_risk_until_cooldown() -> None:
    store = MemoryStore()
    strict = Scorer(ServingSettings(time_source="caller", throttle_threshold=0.0, perturb_threshold=0.0, block_threshold=1.0001, cooldown_s=100), store=store)
    first = strict.score(ev(0, 1000.0))
    assert first.action == "perturb"
    lenient = Scorer(ServingSettings(time_source="caller", throttle_threshold=1.0, perturb_threshold=1.0, block_threshold=1.0001, cooldown_s=100), store=store)
    assert lenient.score(ev(1, 1050.0)).action == "perturb"  # held: inside the cool-down
    assert lenient.score(ev(2, 1200.0)).action == "allow"  # the hold has expired


def test_shadow_mode_reports_but_allows() -> None:
    sc = Scorer(ServingSettings(time_source="caller", mode="shadow", throttle_threshold=0.0, perturb_threshold=0.0, block_threshold=0.0))
    s = sc.score(ev(0, 1.0))
    assert s.action == "allow" and s.shadow_action == "block"
    assert s.reasons and s.reasons[-1].startswith("scope:")


@pytest.mark.parametrize("bound, accounts", [(10, 50), (100, 30)])
def test_memory_store_is_bounded(bound: int, accounts: int) -> None:
    store = MemoryStore(max_scopes=bound)
    sc = Scorer(ServingSettings(time_source="caller"), store=store)
    for i in range(accounts):
        sc.score(ev(i, float(i), account=f"acct-{i}"))
    assert store.size() <= bound
    assert store.evictions == max(accounts - bound, 0)


def test_ttl_restarts_an_idle_scope() -> None:
    # Idle time is the store's own clock (never the caller's ts), so the test drives that clock.
    now = [0.0]
    store = MemoryStore(ttl_s=60, clock=lambda: now[0])
    sc = Scorer(ServingSettings(time_source="caller"), store=store)
    sc.score(ev(0, 0.0))
    sc.score(ev(1, 10.0))
    totals = []
    store.update("account", "acct-1", 10.0, lambda st: totals.append(st.total))
    now[0] = 500.0
    sc.score(ev(2, 500.0))  # idle past the TTL: a fresh history
    store.update("account", "acct-1", 500.0, lambda st: totals.append(st.total))
    assert totals == [2, 1]  # two requests, then after the idle gap only the new one


# Network batches from small to the GPU tier's large ones (MOAT_REPLAY_CHUNK) score alike.
@pytest.mark.parametrize("chunk", [64, 1024])
def test_batched_scoring_equals_one_at_a_time(small_traces: Path, chunk: int) -> None:
    events = [Event.model_validate(r) for _, r in zip(range(600), iter_raw(small_traces / "test.jsonl"))]
    one = Scorer(ServingSettings(time_source="caller"))
    singles = [one.score(e) for e in events]
    many = Scorer(ServingSettings(time_source="caller", replay_chunk=chunk))
    streamed = list(many.score_stream(events))
    assert [s.action for s in singles] == [s.action for s in streamed]
    assert max(abs(a.risk - b.risk) for a, b in zip(singles, streamed)) < 1e-5


@pytest.mark.parametrize("faulty", [(), (0,), (7,), (3, 4, 29)], ids=["none", "first", "one", "several"])
def test_score_each_keeps_a_fault_to_its_event(small_traces: Path, faulty: tuple[int, ...]) -> None:
    """Without faults, score_each is score_many bit for bit; a faulty event gets its exception in
    its place and the others the scores of score_many over the events without it."""
    events = [Event.model_validate(r) for _, r in zip(range(30), iter_raw(small_traces / "test.jsonl"))]
    each = Scorer(ServingSettings(time_source="caller"))
    step = each._step
    bad = {events[i].request_id for i in faulty}

    def maybe_faulty(event: Event, clock=None):  # noqa: ANN001, ANN202
        if event.request_id in bad:
            raise ValueError(f"injected fault for {event.request_id}")
        return step(event, clock)

    each._step = maybe_faulty  # type: ignore[method-assign]
    got = each.score_each(events)
    want = iter(Scorer(ServingSettings(time_source="caller")).score_many([e for e in events if e.request_id not in bad]))
    for e, g in zip(events, got, strict=True):
        if e.request_id in bad:
            assert isinstance(g, ValueError) and e.request_id in str(g)
        else:
            assert g == next(want)


# (case, MOAT_ONNX_PROVIDER, providers onnxruntime has, providers used or the error's words)
PROVIDERS = [
    ("cpu by default, even with a GPU", "cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ("auto takes the GPU, without TF32", "auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]),
    ("auto without a GPU", "auto", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ("cuda demanded, none here", "cuda", ["CPUExecutionProvider"], "install onnxruntime-gpu"),
    ("cuda, without TF32", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]),
]


@pytest.mark.parametrize("case, choice, available, expected", PROVIDERS, ids=[c[0] for c in PROVIDERS])
def test_execution_providers(case: str, choice: str, available: list[str], expected: list | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(RuntimeError, match=expected):
            execution_providers(choice, available)
    else:
        assert execution_providers(choice, available) == expected


# (configured corroboration, throttle threshold override): the gate is the larger of the
# corroboration and the throttle threshold, so only with both at 0 is every window scored.
GATES = [(0.0, 0.0), (0.5, None), (0.9, None)]


@pytest.mark.parametrize("corroboration, throttle", GATES)
def test_dependent_windows_are_scored_only_when_corroborated(small_traces: Path, corroboration: float, throttle: float | None) -> None:
    """The network skips a dependent window (address block, partial key) exactly when the policy
    would ignore it, and the windows it does score get the same risk as scoring all of them."""
    extra = {"throttle_threshold": throttle, "perturb_threshold": throttle} if throttle is not None else {}
    sc = Scorer(ServingSettings(time_source="caller", corroboration=corroboration, **extra))
    events = [Event.model_validate(r) for _, r in zip(range(400), iter_raw(small_traces / "test.jsonl"))]
    plan = sc._plan([sc._step(e)[0] for e in events])
    own, dep = sc._infer(plan)
    own_max = np.zeros(len(events))
    np.maximum.at(own_max, plan.own_event, own)
    need = own_max[plan.dependent_event] >= sc.policy.corroboration
    assert sc.policy.corroboration == max(corroboration, sc.policy.t.throttle)
    assert np.array_equal(np.isnan(dep), ~need)
    np.testing.assert_allclose(dep[need], sc._run(plan.dependent)[need], rtol=1e-6)
    if corroboration == 0.0 and throttle == 0.0:
        assert need.all()


def _req(i: int, account: str, key: str, ip: str) -> Event:
    return ev(i, 1000.0 + 5 * i, account, api_key_id=key, client_ip=ip, params={"temperature": 0.2, "max_tokens": 64})


# (case, requests as (account, key, address), per request which of its windows (account, key,
# address block) mirror the account's): a scope stops mirroring once another account uses it.
MIRRORS = [
    ("own key and address block", [("a1", "k1", "10.0.0.1")] * 3, [(False, True, True)] * 3),
    ("a key shared by two accounts", [("a1", "k", "10.0.0.1"), ("a2", "k", "10.0.1.1"), ("a1", "k", "10.0.0.1")], [(False, True, True), (False, False, True), (False, False, True)]),
    ("two accounts behind one /24", [("a1", "k1", "10.0.0.1"), ("a2", "k2", "10.0.0.2"), ("a1", "k1", "10.0.0.1")], [(False, True, True), (False, True, False), (False, True, False)]),
]


# Gate settings: every dependent window counts, or the shipped bundle's gate, which these
# plain requests stay below (so a mirrored address block must stay unscored, NaN).
GATE_OPEN = {"corroboration": 0.0, "throttle_threshold": 0.0, "perturb_threshold": 0.0}


@pytest.mark.parametrize("gate", [GATE_OPEN, {}], ids=["gate open", "shipped gate"])
@pytest.mark.parametrize("case, requests, expected", MIRRORS, ids=[c[0] for c in MIRRORS])
def test_mirrored_windows_take_the_account_risk_without_the_network(case: str, requests: list, expected: list, gate: dict) -> None:
    """A key or address block that only this account has used is scored as the account (its
    window is the account's but for the scope flag); every other window still goes through the
    network and gets the risk it gets when scored on its own, and a mirrored dependent window
    counts only behind the same gate as any dependent window."""
    from moat.serving.scorer import _pack

    sc = Scorer(ServingSettings(time_source="caller", **gate))
    steps = [sc._step(_req(i, *r))[0] for i, r in enumerate(requests)]
    plan = sc._plan(steps)
    assert plan.mirrored == expected
    assert len(plan.own.last) + len(plan.dependent.last) == sum(not m for flags in expected for m in flags)
    risks = sc._unplan(plan, sc._infer(plan))
    alone = iter(sc._run(_pack([w for st in steps for w in st.windows])).tolist())
    gated = 0
    for st, flags, rs in zip(steps, expected, risks):
        account = next(alone)
        own_max = max([account] + [r for w, r, m in zip(st.windows[1:], rs[1:], flags[1:]) if not w.dependent and not m])
        for w, mirror, r in zip(st.windows[1:], flags[1:], rs[1:]):
            by_itself = next(alone)
            if not mirror:
                assert np.isnan(r) if w.dependent and own_max < sc.policy.corroboration else r == pytest.approx(by_itself, rel=1e-6), (case, w.scope)
            elif w.dependent and own_max < sc.policy.corroboration:
                assert np.isnan(r), (case, w.scope)
                gated += 1
            else:
                assert r == pytest.approx(account, rel=1e-6), (case, w.scope)
    assert (gated > 0) == (gate != GATE_OPEN and any(f[2] for f in expected))


@pytest.mark.parametrize("env, expected", [({}, None), ({"MOAT_CORROBORATION": "0.99"}, 0.99)])
def test_corroboration_defaults_to_the_bundles(monkeypatch: pytest.MonkeyPatch, env: dict, expected: float | None) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    sc = Scorer(ServingSettings(time_source="caller"))
    configured = expected if expected is not None else sc.meta.calibration.corroboration
    assert sc.policy.corroboration == max(configured, sc.policy.t.throttle)


def test_replay_writes_one_score_per_event_in_order(tmp_path: Path, score_schema: dict) -> None:
    import jsonschema

    lines = list(iter_raw(CONTRACT / "example_trace.jsonl"))
    bad = {"request_id": "bad-1", "ts": "not a time", "account_id": "x", "prompt": "p"}
    got: list[dict] = []
    n, invalid = replay(Scorer(ServingSettings(time_source="caller")), [lines[0], bad, *lines[1:]], got.append)
    assert (n, invalid) == (5, 1)
    assert [g["request_id"] for g in got] == ["r1", "bad-1", "r2", "r3", "r4"]
    assert got[1]["reasons"] == ["invalid_event"]
    for g in got:
        jsonschema.validate(g, score_schema)


def test_serving_and_replay_never_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, moat.serving.scorer, moat.serving.service, moat.serving.client, moat.serving.state.redis_store\n"
        "from moat.cli import main\n"
        f"rc = main(['replay', r'{CONTRACT / 'example_trace.jsonl'}', '-o', r'{tmp_path / 's.jsonl'}', '--no-progress'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'pytorch_lightning', 'lightning', 'mlflow') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0 []"


def test_serve_extra_pulls_no_training_stack() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in extras["serve"] + core:
        assert not any(dep.lower().startswith(h) for h in ("torch", "transformers", "pytorch-lightning", "lightning", "mlflow")), dep


def test_replay_command_keeps_bad_lines_in_place(tmp_path: Path) -> None:
    from moat.cli import main

    lines = (CONTRACT / "example_trace.jsonl").read_text().splitlines()
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([lines[0], "{not json", '{"request_id": "bad-2", "ts": 1}', *lines[1:]]) + "\n")
    out = tmp_path / "s.jsonl"
    assert main(["replay", str(trace), "-o", str(out), "--no-progress"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["request_id"] for g in got] == ["r1", "line-2", "bad-2", "r2", "r3", "r4"]
    assert [g["reasons"] for g in got[1:3]] == [["invalid_event"], ["invalid_event"]]


def _probe(bias_tokens: int = 1, top_logprobs: int | None = 5, prompt: str = "Translate to French: the invoice is overdue", temperature: float | None = 0,
           endpoint: str = "/v1/completions", gap: tuple[float, float] = (0.5, 1.5), n: int = 150) -> int | None:
    """A hand-written logit-bias probe (not from the simulator): one prompt, max_tokens=1,
    logprobs, a fresh logit_bias each request. Returns the index of the first request acted on."""
    import random

    rng = random.Random(0)
    sc = Scorer(ServingSettings(time_source="caller"))
    t = 1764500042.0
    for i in range(n):
        t += rng.uniform(*gap)
        params = {"max_tokens": 1, "logprobs": True, "logit_bias": {str(rng.randint(0, 100_000)): 100 for _ in range(bias_tokens)}}
        params |= {k: v for k, v in (("temperature", temperature), ("top_logprobs", top_logprobs)) if v is not None}
        text = {"prompt": prompt} if endpoint == "/v1/completions" else {"messages": [{"role": "user", "content": prompt}]}
        s = sc.score(Event.model_validate({
            "request_id": f"p{i}", "ts": t, "account_id": "acct_probe", "api_key_id": "key_1", "client_ip": "203.0.113.9",
            "endpoint": endpoint, "params": params, **text,
        }))
        if s.action != "allow":
            return i
    return None


# Variants of one probe that the previous model caught or missed depending on details (bias size,
# an exact top_logprobs value, the prompt). Each must be acted on within 50 requests.
PROBES = [
    ("single-token biases", {}),
    ("20-token biases", {"bias_tokens": 20}),
    ("top_logprobs 20", {"top_logprobs": 20}),
    ("20-token biases, top_logprobs 20", {"bias_tokens": 20, "top_logprobs": 20}),
    ("another prompt", {"prompt": "What is the capital of France? Answer:"}),
    ("no temperature, no top_logprobs", {"temperature": None, "top_logprobs": None}),
    ("chat endpoint", {"endpoint": "/v1/chat/completions"}),
    ("slow: one request every 3-10 s", {"gap": (3.0, 10.0)}),
    ("fast: 5-20 requests a second", {"gap": (0.05, 0.2)}),
]


@pytest.mark.parametrize("case, kwargs", PROBES, ids=[c[0] for c in PROBES])
def test_shipped_model_acts_on_hand_written_logit_probes(case: str, kwargs: dict) -> None:
    first = _probe(**kwargs)
    assert first is not None and first < 50, f"{case}: first acted on at request {first}"


# (case, the key of the newcomer's last request, plain requests it sent before through a key of
# its own): an attacker blocked on one key, then a newcomer's plain request, through that key or
# its own, from another address block.
NEWCOMER_KEYS = [
    ("through the abused key", "key_shared", 0),
    ("through its own key", "key_new", 0),
    # 120 + 1 requests: the abused key's count (120 probes + 1) equals the newcomer's; a rule on
    # counts alone took the key for the newcomer's own and blocked it.
    # Its own 120 machine-timed requests open the gate, so the key may escalate it to perturb.
    ("through the abused key, counts equal", "key_shared", 120),
]


@pytest.mark.parametrize("case, key, prior", NEWCOMER_KEYS, ids=[c[0] for c in NEWCOMER_KEYS])
def test_a_key_another_account_abused_never_blocks_a_newcomer(case: str, key: str, prior: int) -> None:
    """A key shared by several accounts is evidence about a cohort: it may escalate an account
    whose own traffic corroborates it, never act on a plain first request by itself. (Thresholds
    lowered so that the shipped model blocks the probe: its risk settles near 0.95.)"""
    sc = Scorer(ServingSettings(time_source="caller", throttle_threshold=0.8, perturb_threshold=0.85, block_threshold=0.9))
    t = 1764500042.0
    attacker = []
    for i in range(120):
        t += 1.0
        attacker.append(sc.score(Event.model_validate({
            "request_id": f"p{i}", "ts": t, "account_id": "acct_probe", "api_key_id": "key_shared", "client_ip": "203.0.113.9",
            "prompt": "Translate to French: the invoice is overdue", "params": {"max_tokens": 1, "logprobs": True, "temperature": 0, "logit_bias": {str(1000 + i): 100}},
        })))
    assert attacker[-1].action == "block", "the setup must block the attacker"
    for i in range(prior):
        t += 1.0
        sc.score(Event.model_validate({
            "request_id": f"o{i}", "ts": t, "account_id": "acct_new", "api_key_id": "key_new", "client_ip": "198.51.100.7",
            "messages": [{"role": "user", "content": f"Question {i} about my garden"}], "params": {"temperature": 0.7},
        }))
    s = sc.score(Event.model_validate({
        "request_id": "n1", "ts": t + 5.0, "account_id": "acct_new", "api_key_id": key, "client_ip": "198.51.100.7",
        "messages": [{"role": "user", "content": "What's a good recipe for banana bread?"}], "params": {"temperature": 0.7},
    }))
    assert s.action != "block", case
    if not prior:
        assert (s.action, s.scope) == ("allow", "account"), case


@pytest.mark.parametrize("entry", ["Scorer.score", "moat replay"])
def test_a_network_that_gives_nan_is_a_model_fault(entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A clear error naming the request (the service fails open on it; replay stops), not an
    assertion deep in the policy."""
    import moat.serving.scorer as scorer
    from moat.cli import main

    monkeypatch.setattr(scorer, "calibrated_risk", lambda logits, t: np.full(len(logits), np.nan))
    if entry == "Scorer.score":
        with pytest.raises(scorer.ModelFault, match="request r1: the network gave a non-finite risk"):
            Scorer(ServingSettings(time_source="caller")).score(ev(1, 10.0))
    else:
        assert main(["replay", str(CONTRACT / "example_trace.jsonl"), "-o", str(tmp_path / "s.jsonl"), "--no-progress"]) == 2
        assert "moat replay: error: request r1: the network gave a non-finite risk" in capsys.readouterr().err


# (case, risks, event of each risk, events): windows come in event order, each event's own
# windows starting with its account's.
PER_EVENT = [
    ("one own window per event", [0.1, 0.9, 0.5], [0, 1, 2], 3),
    ("several own windows per event", [0.1, 0.7, 0.9, 0.2, 0.3], [0, 0, 1, 2, 2], 3),
    ("a NaN risk reaches its event only", [0.4, np.nan, 0.6, 0.2], [0, 0, 1, 2], 3),
    ("a NaN alone", [np.nan, 0.3], [0, 1], 2),
    ("no events", [], [], 0),
]


@pytest.mark.parametrize("case, risks, events, n", PER_EVENT, ids=[c[0] for c in PER_EVENT])
def test_per_event_max_equals_ufunc_at(case: str, risks: list[float], events: list[int], n: int) -> None:
    r, ev = np.array(risks, dtype=np.float64), np.array(events, dtype=np.intp)
    want = np.zeros(n)
    np.maximum.at(want, ev, r)  # what _infer computed before, and still the definition
    got = _per_event_max(r, ev, n)
    assert got.dtype == np.float64 and np.array_equal(got, want, equal_nan=True)
    if len(r) == n and n:
        got[0] = -1.0  # a copy: the gate must not write through into the own risks
        assert r[0] != -1.0


# (case, gate settings, whether some request's gate opens on this trace, so that a hint guesses)
ONE_REQUEST_GATES = [
    ("the shipped gate", {}, False),
    ("a gate at 0.5", {"corroboration": 0.5, "throttle_threshold": 0.5, "perturb_threshold": 0.5}, True),
    ("every gate open", {"corroboration": 0.0, "throttle_threshold": 0.0, "perturb_threshold": 0.0}, True),
    ("every gate shut", {"corroboration": 1.0, "throttle_threshold": 1.0, "perturb_threshold": 1.0, "block_threshold": 1.0}, False),
]


@pytest.mark.parametrize("hinted", [True, False], ids=["with gate hints", "without"])
@pytest.mark.parametrize("case, gate, opens", ONE_REQUEST_GATES, ids=[c[0] for c in ONE_REQUEST_GATES])
def test_one_request_infers_as_the_general_path(small_traces: Path, case: str, gate: dict, opens: bool, hinted: bool) -> None:
    """The live path's one-request `_infer` against `_infer_many` on the same plans, request by
    request: the same risks bit for bit (NaN where a window was skipped), the same answers, and
    the hints left in the same state."""
    events = [Event.model_validate(r) for _, r in zip(range(600), iter_raw(small_traces / "test.jsonl"))]
    fast, general = Scorer(ServingSettings(time_source="caller", **gate)), Scorer(ServingSettings(time_source="caller", **gate))
    got: dict[str, list] = {"fast": [], "general": []}
    for name, sc, infer in (("fast", fast, fast._infer), ("general", general, lambda plan, hints=None: Scorer._infer_many(general, plan, hints))):
        if not hinted:
            sc.gate_hints = None
        sc._infer = lambda plan, hints=None, infer=infer, name=name: got[name].append(infer(plan, hints)) or got[name][-1]  # type: ignore[method-assign]
    dependent = 0
    for e in events:
        assert fast.score(e) == general.score(e), e.request_id
        (own, dep), (own_ref, dep_ref) = got["fast"][-1], got["general"][-1]
        assert np.array_equal(own, own_ref) and np.array_equal(dep, dep_ref, equal_nan=True), e.request_id
        dependent += len(dep)
    assert dependent > 0, "the trace must have dependent windows"
    if hinted:
        a, b = fast.gate_hints, general.gate_hints
        assert a is not None and b is not None
        assert (a.hits, a.wasted, a.missed, list(a._open)) == (b.hits, b.wasted, b.missed, list(b._open))
        assert (a.hits + a.wasted > 0) == opens, "the guessing branch must be reached where gates open"


def _plan_of_one(own: list[float], dependent: list[float]) -> Plan:
    """A one-request plan whose windows carry their risk in their first feature, for a stand-in
    network that reads it back."""
    from types import SimpleNamespace

    def batch(risks: list[float]) -> Batch:
        n = len(risks)
        feats = np.zeros((n, 2, N_FEATURES), dtype=np.float32)
        feats[:, :, 0] = np.array(risks, dtype=np.float32)[:, None]
        return Batch(feats, np.ones((n, 2, N_TOKENS), dtype=np.int64), np.ones((n, 2), dtype=np.float32), np.full(n, 1, dtype=np.intp))

    own_b, dep_b = batch(own), batch(dependent)
    step = SimpleNamespace(windows=[SimpleNamespace(key="acct-1")])
    plan = Plan(own_b, np.zeros(len(own), dtype=np.intp), dep_b, np.zeros(len(dependent), dtype=np.intp), [step], [()])  # type: ignore[list-item]
    return plan


# (case, own windows' risks, dependent windows' risks), for a gate at 0.5
ONE_REQUEST_PLANS = [
    ("account alone, below the gate", [0.2], []),
    ("account and own key, one above the gate", [0.2, 0.9], [0.7]),
    ("at the gate exactly", [0.5], [0.3, 0.8]),
    ("a NaN own risk opens no gate", [float("nan")], [0.6]),
    ("a NaN beside a high risk", [0.9, float("nan")], [0.6, 0.1]),
    ("three own windows, two dependent", [0.1, 0.3, 0.95], [0.4, 0.2]),
]


@pytest.mark.parametrize("hint", ["none", "absent", "guessed open"])
@pytest.mark.parametrize("case, own, dependent", ONE_REQUEST_PLANS, ids=[c[0] for c in ONE_REQUEST_PLANS])
def test_one_request_plan_edge_cases(case: str, own: list[float], dependent: list[float], hint: str) -> None:
    """The cases a trace seldom holds (several own windows, a NaN risk, a risk at the gate):
    `_infer_one` against `_infer_many` on the same plan, with a network that reads each window's
    risk from its input."""
    from moat.serving.gate_hints import GateHints

    sc = Scorer(ServingSettings(time_source="caller", corroboration=0.5, throttle_threshold=0.5, perturb_threshold=0.5))
    plan = _plan_of_one(own, dependent)
    sc._run = lambda batch: batch.feats[:, 0, 0].astype(np.float64)  # type: ignore[method-assign]
    results = []
    for infer in (Scorer._infer_one, Scorer._infer_many):
        hints = None if hint == "none" else GateHints()
        if hints is not None and hint == "guessed open":
            hints.learn(["acct-1"], [True])
        o, d = infer(sc, plan, hints)
        results.append((o, d, None if hints is None else (hints.hits, hints.wasted, hints.missed, list(hints._open))))
    (o1, d1, h1), (o2, d2, h2) = results
    assert np.array_equal(o1, o2, equal_nan=True) and o1.dtype == o2.dtype
    assert np.array_equal(d1, d2, equal_nan=True) and d1.dtype == d2.dtype
    assert h1 == h2
