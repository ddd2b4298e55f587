"""Score one request event against a running Moat service, as a gateway does.

    python examples/client.py [URL] [--event FILE] [--timeout-s S]

URL defaults to $MOAT_CLIENT_URL, else http://localhost:3000 (start one with `make run`). Prints
the decision as JSON. Exits 1 when Moat did not answer (the client's fail-open default stood
in), 2 when the service rejected the event as invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from moat.serving.client import InvalidEvent, MoatClient

EXAMPLES = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("url", nargs="?", default=os.environ.get("MOAT_CLIENT_URL", "http://localhost:3000"), help="service URL")
    p.add_argument("--event", type=Path, default=EXAMPLES / "event.json", help="JSON file holding one request event")
    # A gateway keeps the client's 50 ms default on a warm connection; this one-shot script also
    # pays for connecting and for the service's first call, so it waits longer.
    p.add_argument("--timeout-s", type=float, default=2.0, help="how long to wait for Moat before failing open")
    args = p.parse_args(argv)

    event = json.loads(args.event.read_text(encoding="utf-8"))
    with MoatClient(url=args.url, timeout_s=args.timeout_s) as moat:
        try:
            decision = moat.score(event)
        except InvalidEvent as e:
            print(f"moat rejected {args.event}: {e}", file=sys.stderr)
            return 2
    print(decision.model_dump_json(exclude_none=True))
    if decision.degraded:
        print(f"moat at {args.url} gave no score (unreachable, an error, or no answer within {args.timeout_s} s); the client failed open", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
