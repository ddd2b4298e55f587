"""`moat serve [--port 3000] [--model PATH]`: start the BentoML scoring service."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--model", help="bundle directory, models:/moat-risk@champion or bentoml:TAG (default: the shipped model)")
    p.add_argument("--state", help="memory (default) or redis://host:port/db")
    p.add_argument("--shadow", action="store_true", help="report what would be done, always allow")


def run(args: argparse.Namespace) -> int:
    from moat.models.bundle import BundleError
    from moat.models.bundle_source import resolve_model
    from moat.serving.settings import ServingSettings

    env = dict(os.environ)
    if args.model:
        env["MOAT_MODEL"] = args.model
    if args.state:
        env["MOAT_STATE"] = args.state
    if args.shadow:
        env["MOAT_MODE"] = "shadow"
    try:
        from moat.models.bundle import load_bundle

        load_bundle(resolve_model(env.get("MOAT_MODEL", ServingSettings().model)))  # fail fast, with a clear message
    except BundleError as exc:
        print(f"moat serve: error: {exc}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "bentoml", "serve", "moat.serving.service:MoatService", "--port", str(args.port), "--host", args.host]
    print(f"moat serve: http://{args.host}:{args.port}  (POST /score, /score/batch; /livez /readyz /metrics)", file=sys.stderr)
    return subprocess.call(cmd, env=env)
