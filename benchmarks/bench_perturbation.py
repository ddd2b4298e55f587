"""What `perturb` adds to a proxy's latency: request caps, a whole chat.completion, and an SSE
stream of the same answer, per call, single-threaded. The attacker-error and benign-cost table
is `python -m moat.evals.perturbation`.
Usage: python benchmarks/bench_perturbation.py [--tokens 256] [--top 5] [--runs 200]"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from moat.serving.actions import ActionSettings, PerturbSettings, get_action


def per_call_us(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) / 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256, help="tokens in the answer (default: %(default)s)")
    ap.add_argument("--top", type=int, default=5, help="top logprobs the upstream returns per token (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=200, help="timed calls per row (default: %(default)s)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    action = get_action("perturb", ActionSettings(perturb=PerturbSettings(secret="bench")))
    request = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}], "logprobs": True, "top_logprobs": 20, "logit_bias": {"1": 100}, "temperature": 0}
    content = []
    for i in range(args.tokens):
        lps = np.sort(-rng.exponential(1.0, args.top))[::-1]
        tops = [{"token": f"t{i}_{j}", "logprob": float(lp), "bytes": [116]} for j, lp in enumerate(lps)]
        content.append({"token": tops[0]["token"], "logprob": tops[0]["logprob"], "bytes": [116], "top_logprobs": tops})
    response = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"}]}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    stream = b"".join(
        b"data: " + json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [item]}, "finish_reason": None}]}).encode() + b"\n\n"
        for item in content
    ) + b"data: [DONE]\n\n"

    def streamed() -> None:
        t = action.stream(request)
        t.feed(stream)
        t.flush()

    rows = [
        ("request caps", lambda: action.request(request)),
        (f"chat.completion, {args.tokens} tokens x top {args.top}", lambda: action.response(request, response)),
        (f"SSE stream, {args.tokens} chunks x top {args.top}", streamed),
    ]
    print(f"{'step':<45} {'p50 us':>10} {'p99 us':>10} {'p50 us/token':>13}")
    for name, fn in rows:
        p50, p99 = per_call_us(fn, args.runs)
        per_token = "" if name == "request caps" else f"{p50 / args.tokens:13.2f}"
        print(f"{name:<45} {p50:10.1f} {p99:10.1f} {per_token:>13}")


if __name__ == "__main__":
    main()
