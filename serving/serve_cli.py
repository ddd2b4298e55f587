"""`moat serve [--port 3000] [--model PATH]`: start the BentoML scoring service.

Metrics: BentoML keeps Prometheus' multiprocess files in one folder under its home, shared by
every BentoML service on the host and wiped by each one that starts, so side-by-side services
would overwrite each other's counters. Each `moat serve` gets its own folder instead:
PROMETHEUS_MULTIPROC_DIR if set (emptied at start), else a fresh temporary folder removed at exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile


def add_scorer_arguments(p: argparse.ArgumentParser, port: int, shadow: str) -> None:
    """The listening address and the scorer's options, shared by `moat serve` and `moat proxy`."""
    p.add_argument("--port", type=int, default=port, help="HTTP port to listen on")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on; 0.0.0.0 is every interface")
    p.add_argument("--model", help="bundle directory, models:/moat-risk@champion or bentoml:TAG (default: MOAT_MODEL, else the shipped model)")
    p.add_argument("--state", help="where per-scope state lives: memory or redis://host:port/db (default: MOAT_STATE, else memory)")
    p.add_argument("--shadow", action="store_true", help=f"shadow mode: {shadow}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_scorer_arguments(p, 3000, "report what would be done, always allow")


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
        # The message starts with the model spec; name where the user gave it.
        print(f"moat serve: error: {'--model ' if args.model else ''}{exc}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "moat.serving.serve_cli", "moat.serving.service:MoatService", "--port", str(args.port), "--host", args.host]
    print(f"moat serve: http://{args.host}:{args.port}  (POST /score, /score/batch; /livez /readyz /metrics /docs.json)", file=sys.stderr)
    # Replace this process, so that a supervisor's signals reach the server itself.
    os.execve(sys.executable, cmd, env)


def bentoml_serve(argv: list[str]) -> None:
    """`bentoml serve ARGV`, with this service's own Prometheus multiprocess folder."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    own = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    folder = tempfile.mkdtemp(prefix="moat-metrics-") if own else os.environ["PROMETHEUS_MULTIPROC_DIR"]
    # BentoML takes the folder from its container (and empties it), not from the environment.
    BentoMLContainer.prometheus_multiproc_dir.set(folder)
    try:
        cli(["serve", *argv])
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    bentoml_serve(sys.argv[1:])
