"""Per-request costs on the scoring path, single-threaded: summarize + window, ONNX inference at
the default window, the whole Scorer, and `moat replay` throughput.

Then the realistic case (issue 13), on ../shared/data/external/dev-spread.jsonl.gz when it is
there (one line says it is skipped when not): `moat replay` events/s in one process and with
`--workers N`, `Scorer.score` p50/p99 on its events, and the per-stage split of one process.
`--base DIR` measures the same replay and Scorer figures on another source tree (a `git worktree`
or `git archive` of a base commit) in the same run, alternating runs, and prints new/base ratios;
and the main-thread CPU of both trees' replays run side by side a block at a time (the figure
least moved by other jobs on a shared machine), with a check that their outputs are identical.

`--base DIR --bundles-only` runs only the comparison of the two trees' shipped bundles, with this
tree's code (their network calls taking turns, and `Scorer.score` with each, request by request),
then `Scorer.score` of both trees, each with its own code and bundle, taking turns.

Usage: python benchmarks/bench_scoring.py [--trace PATH] [--replay-runs N] [--dev-only] [--quick]
       [--workers N ...] [--base DIR [--bundles-only]]"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from moat.models.bundle import DEFAULT_BUNDLE, load_bundle
from moat.models.events import Event
from moat.models.feature_spec import N_FEATURES, N_TOKENS, WINDOW
from moat.models.scope_window import Crowd, ScopeState, window
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
DEV_SPREAD = ROOT.parent / "shared" / "data" / "external" / "dev-spread.jsonl.gz"
# pyproject's package-dir: the folders that become moat.<name> in an installed tree.
PACKAGE_DIRS = ("models", "data_gen", "training", "serving", "evals", "integrations")


def per_call_us(fn, items) -> tuple[float, float]:
    times = []
    for it in items:
        t = time.perf_counter_ns()
        fn(it)
        times.append((time.perf_counter_ns() - t) / 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def base_env(tree: Path, tmp: Path) -> dict[str, str]:
    """An environment whose `import moat` loads the source tree `tree` (laid out as pyproject's
    package-dir maps it) instead of this checkout: PYTHONPATH is searched before the editable
    install's finder."""
    shim = tmp / "base-shim" / "moat"
    shim.mkdir(parents=True)
    for f in (tree / "moat").iterdir():
        (shim / f.name).symlink_to(f)
    for name in PACKAGE_DIRS:
        (shim / name).symlink_to(tree / name)
    return {**os.environ, "PYTHONPATH": str(shim.parent)}  # replay_rate runs there too


def replay_rate(trace: Path, n: int, tmp: str, env: dict[str, str] | None = None, workers: int = 1) -> float:
    out = Path(tmp) / "scores.jsonl"
    cmd = [sys.executable, "-m", "moat", "replay", str(trace), "-o", str(out), "--no-progress", *(["--workers", str(workers)] if workers > 1 else [])]
    t0 = time.perf_counter()
    # `python -m` puts its working directory first on sys.path: run the base tree from its shim,
    # where this checkout's moat/ cannot shadow it.
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, cwd=env["PYTHONPATH"] if env else ROOT, env=env)
    return n / (time.perf_counter() - t0)


def score_latency(trace: Path, limit: int) -> tuple[float, float]:
    """Scorer.score p50/p99 (us) over the trace's first `limit` events, in the trace's time."""
    events = [Event.model_validate(r) for r in itertools.islice(iter_raw(trace), limit)]
    sc = Scorer(ServingSettings(time_source="caller"))
    return per_call_us(sc.score, events)


def cold_cache() -> None:
    """Empty the text-sketch cache (on trees that have one)."""
    from moat.models import summary

    if hasattr(summary, "SKETCHES"):
        summary.SKETCHES.clear()


WINDOWS = "network windows per event"


def _stage(k: str, v: float) -> str:
    return f"{k} {v:.2f}" if k == WINDOWS else f"{k} {v:.0f}"


def stage_split(trace: Path, limit: int) -> dict[str, float]:
    """Microseconds per event of each stage of one-process replay, run stage by stage."""
    from moat.models.featurizer import Featurizer
    from moat.models.memory_store import MemoryStore
    from moat.models.traces import dumps, iter_lines
    from moat.serving.scorer import CallerClock

    lines = list(itertools.islice(iter_lines(trace), limit))
    n = len(lines)
    out: dict[str, float] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        r = fn()
        out[name] = 1e6 * (time.perf_counter() - t0) / n
        return r

    events = timed("parse (validate JSON)", lambda: [Event.model_validate_json(x) for x in lines])
    # Each stage that summarises starts from a cold text-sketch cache, as a replay does, so a
    # stage does not reuse the sketches of the stage before it.
    cold_cache()
    timed("summarize", lambda: [summarize(e) for e in events])
    featurizer = Featurizer(MemoryStore())
    cold_cache()
    timed("featurise (summarize + every scope)", lambda: [featurizer.step(e) for e in events])
    sc = Scorer(ServingSettings(state="memory"))
    stepped = [sc._step(e, CallerClock()) for e in events]
    chunks = [stepped[i : i + 128] for i in range(0, n, 128)]
    plans = timed("pack windows", lambda: [sc._plan([st for st, _ in c]) for c in chunks])
    ran = []
    network = sc._run  # counted per call: the same in the base tree, whatever it packs
    sc._run = lambda batch: ran.append(len(batch.last)) or network(batch)
    risks = timed("network (ONNX)", lambda: [sc._unplan(p, sc._infer(p)) for p in plans])
    out[WINDOWS] = sum(ran) / n
    flat = [r for rs in risks for r in rs]
    scores = timed("policy + reasons", lambda: [sc._decide(e, st, store, r) for e, (st, store), r in zip(events, stepped, flat)])
    timed("write JSON", lambda: [dumps(x.model_dump(exclude_none=True)) for x in scores])
    return out


def _score_in_turn(scorers: dict[Any, Scorer], events: list[Event]) -> dict[Any, list[float]]:
    """Microseconds of each scorer's `score` on every event, request by request in turn (who
    goes first alternates), so a slow phase of the machine hits them alike."""
    order = list(scorers)
    lat: dict[Any, list[float]] = {k: [] for k in order}
    for i, e in enumerate(events):
        for k in order if i % 2 else order[::-1]:
            t0 = time.perf_counter_ns()
            scorers[k].score(e)
            lat[k].append((time.perf_counter_ns() - t0) / 1e3)
    return lat


def queued_calls(trace: Path, limit: int, sizes: tuple[int, ...] = (1, 2, 4, 8, 16)) -> None:
    """What the service gains when /score calls queue (serving/service.py, SingleCalls): the
    first `limit` events through one `score_many` per k calls, one scorer per k, taking turns a
    block of 16 events at a time; and how far the answers move from one call at a time."""
    events = [Event.model_validate(r) for r in itertools.islice(iter_raw(trace), limit)]
    scorers = {k: Scorer(ServingSettings(time_source="caller")) for k in sizes}
    spent = dict.fromkeys(sizes, 0)
    answers: dict[int, list[Any]] = {k: [] for k in sizes}
    block = max(sizes)
    for i, a in enumerate(range(0, len(events), block)):
        for k in sizes if i % 2 else sizes[::-1]:
            t0 = time.perf_counter_ns()
            for b in range(a, min(a + block, len(events)), k):
                answers[k] += scorers[k].score_many(events[b : b + k])
            spent[k] += time.perf_counter_ns() - t0
    one = answers[sizes[0]]
    parts = []
    for k in sizes:
        moved = max(abs(x.risk - y.risk) for x, y in zip(answers[k], one))
        acts = sum(x.action != y.action for x, y in zip(answers[k], one))
        parts.append(f"{k}: {spent[k] / len(events) / 1e3:.0f} us ({spent[k] / spent[sizes[0]]:.2f}x; risks within {moved:.0e}, {acts} actions differ)")
    print(f"  queued /score calls scored together, Scorer.score_many of k calls, taking turns (first {len(events):,} events), per event: " + ", ".join(parts))


def mirror_layouts(trace: Path, limit: int, block: int = 500) -> None:
    """The memory store with mirrors kept once against every scope in a state of its own
    (`MemoryStore(share_mirrors=...)`), in one process taking turns: featurisation a block at a
    time (process CPU), then `Scorer.score` request by request. The two see one text-sketch
    cache, so each block and request alternates which goes first."""
    from moat.models.featurizer import Featurizer
    from moat.models.memory_store import MemoryStore
    from moat.models.traces import iter_lines

    events = [Event.model_validate_json(x) for x in itertools.islice(iter_lines(trace), limit)]
    layouts = (True, False)
    featurizers = {on: Featurizer(MemoryStore(share_mirrors=on)) for on in layouts}
    cpu = {on: 0 for on in layouts}
    ratios = []
    for k, a in enumerate(range(0, len(events), block)):
        spent = {}
        for on in layouts if k % 2 else layouts[::-1]:
            t0 = time.process_time_ns()
            for e in events[a : a + block]:
                featurizers[on].step(e)
            spent[on] = time.process_time_ns() - t0
            cpu[on] += spent[on]
        ratios.append(spent[True] / spent[False])
    n = len(events)
    print(f"  featurise, mirrors kept once against separate states, blocks of {block} taking turns: {cpu[True] / n / 1e3:.0f} against {cpu[False] / n / 1e3:.0f} us per event ({cpu[True] / cpu[False]:.2f}x, median block {statistics.median(ratios):.2f}x)")
    lat = _score_in_turn({on: Scorer(ServingSettings(time_source="caller"), store=MemoryStore(share_mirrors=on)) for on in layouts}, events[:5000])
    (s50, s99), (p50, p99) = ((statistics.median(lat[on][200:]), float(np.percentile(lat[on][200:], 99))) for on in layouts)
    print(f"  Scorer.score, the same two layouts request by request in turn (first 5,000 events): p50 {s50:.0f} against {p50:.0f} us ({s50 / p50:.2f}x), p99 {s99:.0f} against {p99:.0f} us")


def _record_calls(sc: Scorer, score: Callable[[], object]) -> list[dict[str, np.ndarray]]:
    """The network inputs of every call `score()` makes through `sc`."""
    feeds: list[dict[str, np.ndarray]] = []
    network = sc._run
    sc._run = lambda batch: feeds.append({"feats": batch.feats, "tokens": batch.tokens, "mask": batch.mask}) or network(batch)
    score()
    sc._run = network
    return feeds


def _calls_in_turn(sessions: dict[str, ort.InferenceSession], feeds: list[dict[str, np.ndarray]], block: int, reps: int) -> tuple[float, float, float]:
    """Median seconds per call of each session ("new", "base") and the median block ratio."""
    spent: dict[str, list[float]] = {"new": [], "base": []}
    for rep in range(reps):
        for k, a in enumerate(range(0, len(feeds), block)):
            for name in ("new", "base") if (rep + k) % 2 == 0 else ("base", "new"):
                t0 = time.perf_counter()
                for f in feeds[a : a + block]:
                    sessions[name].run(["logits"], f)
                spent[name].append((time.perf_counter() - t0) / len(feeds[a : a + block]))
    ratios = [x / y for x, y in zip(spent["new"], spent["base"])]
    return statistics.median(spent["new"]), statistics.median(spent["base"]), statistics.median(ratios)


def network_graphs(trace: Path, base_bundle: Path, limit: int = 4000) -> None:
    """This tree's bundle against the base tree's, both run by this tree's code in one process:
    its graph on the network calls the live path makes for the trace's first `limit` events
    (one to three windows each) and on the replay path's calls (chunks of 128 events), taking
    turns a block of calls at a time, with the largest logit difference; then `Scorer.score`
    with each bundle, request by request in turn."""
    import onnx

    from moat.models.traces import iter_lines

    events = [Event.model_validate_json(x) for x in itertools.islice(iter_lines(trace), limit)]
    paths = {"new": load_bundle(DEFAULT_BUNDLE)[1], "base": load_bundle(base_bundle)[1]}
    live_sc = Scorer(ServingSettings(time_source="caller"))
    live = _record_calls(live_sc, lambda: [live_sc.score(e) for e in events])
    stream_sc = Scorer(ServingSettings(state="memory"))
    batched = _record_calls(stream_sc, lambda: list(stream_sc.score_stream(events, chunk=128)))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for name, p in paths.items()}
    worst = max(float(np.abs(sessions["new"].run(["logits"], f)[0] - sessions["base"].run(["logits"], f)[0])[f["mask"] > 0].max()) for f in live + batched)
    nodes = {name: len(onnx.load(str(p)).graph.node) for name, p in paths.items()}
    print(f"  network graph, this bundle's ({nodes['new']} nodes) against base's ({nodes['base']}), taking turns a block of calls at a time; largest logit difference {worst:.1e}:")
    for what, feeds, block, reps in (("live path", live, 200, 10), ("replay path", batched, 4, 5)):
        new, base, ratio = _calls_in_turn(sessions, feeds, block, reps)
        windows = sum(len(f["mask"]) for f in feeds) / len(feeds)
        print(f"    {what}, {len(feeds):,} calls of {windows:.1f} windows on average for the first {limit:,} events: {1e6 * new:.0f} against {1e6 * base:.0f} us per call (median block {ratio:.2f}x)")
    lat = _score_in_turn({name: Scorer(ServingSettings(time_source="caller"), bundle=p.parent) for name, p in paths.items()}, events)
    (n50, n99), (b50, b99) = ((statistics.median(lat[k][200:]), float(np.percentile(lat[k][200:], 99))) for k in ("new", "base"))
    print(f"    Scorer.score with each bundle, request by request in turn: p50 {n50:.0f} against {b50:.0f} us ({n50 / b50:.2f}x), p99 {n99:.0f} against {b99:.0f} us ({n99 / b99:.2f}x)")


def gate_hints(trace: Path, limit: int) -> None:
    """`Scorer.score` with the live path's gate hints against without (serving/gate_hints.py), in
    one process, request by request in turn: latency, network calls per request, how the guesses
    went, and whether any answer differs."""
    from moat.models.traces import iter_lines

    events = [Event.model_validate_json(x) for x in itertools.islice(iter_lines(trace), limit)]
    scorers = {on: Scorer(ServingSettings(time_source="caller")) for on in (True, False)}
    scorers[False].gate_hints = None
    calls = dict.fromkeys(scorers, 0)
    for on, sc in scorers.items():
        run = sc._run

        def counted(batch, run=run, on=on):  # noqa: ANN001, ANN202
            calls[on] += 1
            return run(batch)

        sc._run = counted
    lat: dict[bool, list[float]] = {on: [] for on in scorers}
    differ = 0
    for i, e in enumerate(events):
        got = {}
        for on in (True, False) if i % 2 else (False, True):
            t0 = time.perf_counter_ns()
            got[on] = scorers[on].score(e)
            lat[on].append((time.perf_counter_ns() - t0) / 1e3)
        differ += got[True] != got[False]
    hints = scorers[True].gate_hints
    assert hints is not None
    dependent = hints.hits + hints.missed
    q = {on: [float(np.percentile(lat[on][500:], p)) for p in (50, 90, 99)] for on in scorers}
    print(f"  gate hints, Scorer.score with against without, request by request in turn (first {len(events):,} events): network calls per request {calls[True] / len(events):.2f} against {calls[False] / len(events):.2f}; "
          f"p50 {q[True][0]:.0f} against {q[False][0]:.0f} us ({q[True][0] / q[False][0]:.2f}x), p90 {q[True][1]:.0f} against {q[False][1]:.0f} ({q[True][1] / q[False][1]:.2f}x), p99 {q[True][2]:.0f} against {q[False][2]:.0f} ({q[True][2] / q[False][2]:.2f}x); "
          f"needed dependent windows guessed {hints.hits / max(dependent, 1):.1%}, windows sent for nothing {hints.wasted} of {hints.hits + hints.wasted}; answers that differ: {differ}")


def replay_blocks_child() -> None:
    """Run by `interleaved_cpu` in each tree's environment: a one-process replay of dev-spread
    (as `moat replay` scores valid events: the stream, then each score's JSON), advanced one
    block at a time. Each line on stdin is a block size; the answer is the block's main-thread
    CPU seconds (the network thread excluded) and a digest of its output lines."""
    from moat.models.traces import dumps, iter_lines

    sc = Scorer(ServingSettings(state="memory"))
    stream = sc.score_stream(Event.model_validate_json(x) for x in iter_lines(DEV_SPREAD))
    print("ready", flush=True)
    for line in sys.stdin:
        h = hashlib.sha256()
        t0 = time.thread_time()
        for score in itertools.islice(stream, int(line)):
            # model_version aside: a re-exported bundle answers the same under a new version.
            h.update(dumps(score.model_dump(exclude_none=True, exclude={"model_version"})).encode())
        print(json.dumps([time.thread_time() - t0, h.hexdigest()]), flush=True)


def _stop(procs: Iterable[subprocess.Popen]) -> None:
    """Close the children's input, so that they end; kill any that did not (one that died
    mid-run leaves the other waiting for its next block)."""
    for p in procs:
        if p.stdin is not None and not p.stdin.closed:
            p.stdin.close()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def score_blocks_child() -> None:
    """Run by `interleaved_latency` in each tree's environment: `Scorer.score` on dev-spread's
    events one at a time, in the trace's time, advanced one block at a time. Each line on stdin
    is a block size; the answer is the block's per-call microseconds."""
    from moat.models.traces import iter_lines

    sc = Scorer(ServingSettings(time_source="caller"))
    events = (Event.model_validate_json(x) for x in iter_lines(DEV_SPREAD))
    print("ready", flush=True)
    for line in sys.stdin:
        lat = []
        for e in itertools.islice(events, int(line)):
            t0 = time.perf_counter_ns()
            sc.score(e)
            lat.append((time.perf_counter_ns() - t0) / 1e3)
        print(json.dumps(lat), flush=True)


def _in_turn(env: dict[str, str], child: str, n: int, block: int) -> list[dict[str, Any]]:
    """A `child` process of this tree and one of the base tree, advanced `block` events at a
    time, taking turns (who goes first alternates), so that a slow phase of this shared machine
    hits both alike: each block's answers, by tree."""
    cmd = [sys.executable, str(Path(__file__).resolve()), child]
    procs = {"new": subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)}
    procs["base"] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=env["PYTHONPATH"], env=env)
    blocks = []
    try:
        for p in procs.values():
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for i, a in enumerate(range(0, n, block)):
            answers = {}
            for name in ("new", "base") if i % 2 == 0 else ("base", "new"):
                p = procs[name]
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(f"{min(block, n - a)}\n")
                p.stdin.flush()
                answers[name] = json.loads(p.stdout.readline())
            blocks.append(answers)
    finally:
        _stop(procs.values())
    return blocks


def interleaved_latency(env: dict[str, str], n: int = 5000, block: int = 250) -> None:
    """`Scorer.score` of this tree and the base tree on dev-spread's first `n` events, in two
    processes taking turns a block at a time."""
    blocks = _in_turn(env, "--score-blocks-child", n, block)
    lat = {k: [x for b in blocks for x in b[k]] for k in ("new", "base")}
    (n50, n99), (b50, b99) = ((statistics.median(lat[k][200:]), float(np.percentile(lat[k][200:], 99))) for k in ("new", "base"))
    print(f"  Scorer.score, both trees taking turns {block} events at a time (first {n:,} events): p50 {n50:.0f} against {b50:.0f} us ({n50 / b50:.2f}x), p99 {n99:.0f} against {b99:.0f} us ({n99 / b99:.2f}x)")


def interleaved_cpu(env: dict[str, str], n: int, block: int = 1000) -> None:
    """Main-thread CPU per event of this tree and the base tree, replaying dev-spread side by side
    in two processes that take turns a block at a time. Checks the outputs are identical too."""
    blocks = _in_turn(env, "--replay-blocks-child", n, block)
    cpu = {k: [b[k][0] for b in blocks] for k in ("new", "base")}
    same = all(b["new"][1] == b["base"][1] for b in blocks)
    new, base = (1e6 * sum(cpu[k]) / n for k in ("new", "base"))
    ratios = [x / y for x, y in zip(cpu["new"], cpu["base"])]
    print(
        f"  main-thread CPU of a one-process replay (network thread excluded), blocks of {block:,} events taking turns: new {new:.0f} us per event, base {base:.0f} us; "
        f"new / base {new / base:.2f}x (median block {statistics.median(ratios):.2f}x); output identical to base (model_version aside): {'yes' if same else 'NO'}"
    )


def dev_spread(args: argparse.Namespace, tmp: str) -> None:
    if not DEV_SPREAD.is_file():
        print(f"dev-spread: skipped ({DEV_SPREAD} is missing: the shared folder beside the repository)")
        return
    n = sum(1 for _ in iter_raw(DEV_SPREAD))
    print(f"dev-spread ({n} events, real prompts and multi-turn histories):")
    env = base_env(args.base.resolve(), Path(tmp)) if args.base else None
    if env is not None:
        where = subprocess.run([sys.executable, "-c", "import os, moat.models.summary as m; print(os.path.realpath(m.__file__))"], check=True, capture_output=True, text=True, cwd=env["PYTHONPATH"], env=env).stdout.strip()
        if not where.startswith(str(args.base.resolve())):
            raise SystemExit(f"--base {args.base}: moat still loads from {where}")
        print(f"  base: {args.base}")
    # Runs alternate between the configurations, so a slow phase of the machine hits them alike.
    configs = [("one process", None, 1), *((f"--workers {w}", None, w) for w in args.workers), *([("base, one process", env, 1)] if env else [])]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for _ in range(args.replay_runs):
        for name, e, w in configs:
            rates[name].append(replay_rate(DEV_SPREAD, n, tmp, e, w))
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        extra = f"; {med[name] / med['one process']:.2f}x one process" if name.startswith("--workers") else ""
        print(f"  moat replay, {name}: median {med[name]:,.0f} events/s (min {min(r):,.0f}, max {max(r):,.0f}; {len(r)} runs, start-up included){extra}")
    if env is not None:
        print(f"  moat replay one process, new / base: {med['one process'] / med['base, one process']:.2f}x")
    if env is not None:
        interleaved_cpu(env, n)
        interleaved_latency(env)
        network_graphs(DEV_SPREAD, args.base.resolve() / "models" / "default")
    p50, p99 = score_latency(DEV_SPREAD, 5000)
    print(f"  Scorer.score (first 5,000 events, trace time): p50 {p50:.0f} us, p99 {p99:.0f} us")
    if args.quick:
        return
    if env is not None:
        got = subprocess.run([sys.executable, __file__, "--score-latency-only"], check=True, capture_output=True, text=True, cwd=env["PYTHONPATH"], env=env).stdout
        b50, b99 = json.loads(got)
        print(f"  Scorer.score on base: p50 {b50:.0f} us, p99 {b99:.0f} us; new / base p50 {p50 / b50:.2f}x, p99 {p99 / b99:.2f}x")
    split = stage_split(DEV_SPREAD, 10000)
    print("  one-process stages, first 10,000 events (us per event): " + ", ".join(_stage(k, v) for k, v in split.items()))
    if env is not None:
        got = subprocess.run([sys.executable, __file__, "--stage-split-only"], check=True, capture_output=True, text=True, cwd=env["PYTHONPATH"], env=env).stdout
        print("  the same stages on base, run next: " + ", ".join(_stage(k, v) for k, v in json.loads(got).items()))
    mirror_layouts(DEV_SPREAD, 20000)
    gate_hints(DEV_SPREAD, 8000)
    queued_calls(DEV_SPREAD, 8000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path)
    ap.add_argument("--replay-runs", type=int, default=5)
    ap.add_argument("--dev-only", action="store_true", help="only the dev-spread case")
    ap.add_argument("--workers", type=int, nargs="*", default=[2], help="worker counts for the dev-spread replay (default: 2)")
    ap.add_argument("--quick", action="store_true", help="dev-spread: replay rates and Scorer.score latency only (no stage split, layouts or gate hints)")
    ap.add_argument("--base", type=Path, help="a source tree of the base commit to compare with (dev-spread case)")
    ap.add_argument("--bundles-only", action="store_true", help="with --base: only this tree's bundle against the base tree's (network calls and Scorer.score, in turn)")
    ap.add_argument("--score-latency-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--replay-blocks-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--score-blocks-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage-split-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay_blocks_child:  # run by interleaved_cpu, in either tree's environment
        replay_blocks_child()
        return
    if args.score_blocks_child:  # run by interleaved_latency, in either tree's environment
        score_blocks_child()
        return
    if args.score_latency_only:  # run by --base in the base tree's environment
        print(json.dumps(score_latency(DEV_SPREAD, 5000)))
        return
    if args.stage_split_only:  # run by --base in the base tree's environment
        print(json.dumps(stage_split(DEV_SPREAD, 10000)))
        return
    if args.bundles_only:
        if not args.base:
            raise SystemExit("--bundles-only compares with --base DIR")
        network_graphs(DEV_SPREAD, args.base.resolve() / "models" / "default")
        with tempfile.TemporaryDirectory() as tmp:
            interleaved_latency(base_env(args.base.resolve(), Path(tmp)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if not args.dev_only:
            simulator(args, tmp)
        dev_spread(args, tmp)


def simulator(args: argparse.Namespace, tmp: str) -> None:
    trace = args.trace
    if trace is None:
        subprocess.run([sys.executable, "-m", "moat", "generate", "--out", tmp, "--actors", "200", "--days", "1", "--seed", "2", "--no-progress"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        trace = Path(tmp) / "test.jsonl"
    events = [Event.model_validate(r) for r in itertools.islice(iter_raw(trace), 30000)]

    # 1. summarize + window (one scope), warm state per account.
    states: dict[str, ScopeState] = {}

    def feat(e: Event) -> None:
        window(states.setdefault(e.account_id, ScopeState()), summarize(e), Crowd(), "account")

    p50, p99 = per_call_us(feat, events[:20000])
    print(f"summarize + window (account scope): p50 {p50:.0f} us, p99 {p99:.0f} us per request")

    # 2. ONNX at the default window, one thread.
    _, onnx = load_bundle(DEFAULT_BUNDLE)
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx), o, providers=["CPUExecutionProvider"])
    for b in (1, 3):
        feed = {"feats": np.random.rand(b, WINDOW, N_FEATURES).astype(np.float32), "tokens": np.random.randint(0, 4096, (b, WINDOW, N_TOKENS)), "mask": np.ones((b, WINDOW), np.float32)}
        p50, p99 = per_call_us(lambda _: sess.run(None, feed), range(3000))
        print(f"ONNX, batch {b} x window {WINDOW}, 1 thread: p50 {p50:.0f} us, p99 {p99:.0f} us")

    # 3. The whole Scorer per request (state, features for every scope, ONNX, policy).
    sc = Scorer(ServingSettings(time_source="caller"))
    p50, p99 = per_call_us(sc.score, events[:5000])
    print(f"Scorer.score (all scopes): p50 {p50:.0f} us, p99 {p99:.0f} us per request")

    # 4. moat replay end to end (parse, score, write), as a user runs it. This shared machine's
    # speed drifts by tens of percent over minutes, so report the median of several runs.
    out = Path(tmp) / "scores.jsonl"
    n = sum(1 for _ in iter_raw(trace))
    rates = []
    for _ in range(args.replay_runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moat", "replay", str(trace), "-o", str(out), "--no-progress"], check=True, stderr=subprocess.DEVNULL, cwd=ROOT)
        rates.append(n / (time.perf_counter() - t0))
    print(f"moat replay: {n} events, {len(rates)} runs: median {statistics.median(rates):,.0f} events/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}; start-up included)")


if __name__ == "__main__":
    main()
