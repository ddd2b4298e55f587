"""`moat proxy --upstream URL [--port 8080] [--host]`: the OpenAI-compatible reverse proxy,
with the gateway decision endpoints (Envoy ext_authz, LiteLLM guardrail API) in the same
process. Settings not given as flags come from MOAT_PROXY_*, MOAT_PERTURB_*, MOAT_THROTTLE_* and
the scorer's MOAT_* variables."""

from __future__ import annotations

import argparse
import sys

from moat.serving.serve_cli import add_scorer_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upstream", help="base URL of the real OpenAI-compatible API, e.g. https://api.openai.com (default: MOAT_PROXY_UPSTREAM; unset: decision endpoints only)")
    add_scorer_arguments(p, 8080, "score and report, always forward")


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from moat.models.bundle import BundleError
    from moat.serving.actions import ActionSettings
    from moat.serving.proxy import ProxySettings, build_proxy_app
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    overrides = {k: v for k, v in {"model": args.model, "state": args.state, "mode": "shadow" if args.shadow else None}.items() if v}
    proxy_overrides = {"upstream": args.upstream} if args.upstream else {}
    try:
        settings = ProxySettings(**proxy_overrides)
        actions = ActionSettings()  # MOAT_PERTURB_*, MOAT_THROTTLE_*, MOAT_WATERMARK_*: checked before serving
        scorer = Scorer(ServingSettings(**overrides))
    except BundleError as exc:
        print(f"moat proxy: error: {'--model ' if args.model else ''}{exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a MOAT_PROXY_* or MOAT_* variable out of range
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"moat proxy: error: {exc.title}{' ' + where if where else ''}: {first['msg']}", file=sys.stderr)
        return 2
    if settings.upstream is None:
        print("moat proxy: no --upstream (or MOAT_PROXY_UPSTREAM): serving the decision endpoints only", file=sys.stderr)
    print(f"moat proxy: http://{args.host}:{args.port} -> {settings.upstream or '(no upstream)'}  (also /ext_authz/*, /beta/litellm_basic_guardrail_api)", file=sys.stderr)
    app = build_proxy_app(settings, scorer, actions)
    quiet_gc()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, **SERVER_OPTIONS)
    return 0


def quiet_gc() -> None:
    """As in `moat serve`: everything loaded so far (libraries, the model) lives as long as the
    process, so it is frozen out of the collector's walks (full collections of it stalled
    requests for tens of milliseconds), and scoring's many short-lived small objects are
    collected less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# uvicorn picks uvloop and httptools when installed (the serve extra installs them): a quarter
# less CPU per proxied request than asyncio and h11. Moat reads X-Forwarded-For itself, at the
# trusted depth MOAT_PROXY_FORWARDED_DEPTH; uvicorn's own reading would replace the peer with
# the header's last entry whenever the peer is local. Relayed answers keep the upstream's own
# Date and Server headers rather than gaining a second of each.
SERVER_OPTIONS = {"proxy_headers": False, "server_header": False, "date_header": False}
