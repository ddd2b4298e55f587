"""`moat serve [--port 3000] [--model PATH]`: start the BentoML scoring service."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--model", help="bundle directory, models:/moat-risk@champion or bentoml:TAG (default: the shipped model)")
    p.add_argument("--state", help="memory (default) or redis://host:port/db")
    p.add_argument("--shadow", action="store_true", help="report what would be done, always allow")


def run(args: argparse.Namespace) -> int:
    from models.bundle import BundleError
    from serving.bundle_source import resolve_model
    from serving.settings import ServingSettings

    env = dict(os.environ)
    if args.model:
        env["MOAT_MODEL"] = args.model
    if args.state:
        env["MOAT_STATE"] = args.state
    if args.shadow:
        env["MOAT_MODE"] = "shadow"
    try:
        from models.bundle import load_bundle

        load_bundle(resolve_model(env.get("MOAT_MODEL", ServingSettings().model)))  # fail fast, with a clear message
    except BundleError as exc:
        print(f"moat serve: error: {exc}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:MoatService", "--port", str(args.port), "--host", args.host, "--working-dir", str(ROOT)]
    print(f"moat serve: http://{args.host}:{args.port}  (POST /score, /score/batch; /livez /readyz /metrics)", file=sys.stderr)
    return subprocess.call(cmd, env=env)
