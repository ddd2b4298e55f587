"""`moat calibrate --traffic TRACE [TRACE ...] [--model DIR] --out DIR`: thresholds from an
operator's own unlabelled traffic, as a new bundle version.

A model trained on a simulator ranks real traffic well before its absolute risk means the same
thing there: on real chat traffic, an ordinary user's risk sits far higher than on the
simulator's. So before it enforces, the operator runs Moat in shadow mode, collects a day of
traffic and calibrates: the thresholds become upper quantiles of that population's per-account
own risk (moat.models.thresholds), after trimming the far-out accounts and a separated cluster
at the top (a campaign's many accounts score alike), so that at most the target shares of
accounts would ever be blocked or acted on; where a share leaves fewer than ten accounts above
it, the threshold comes from an exponential fit to the population's tail, not from one
sample's maximum. Own risk decides both: a dependent
scope (an address block, a shared key) acts only on accounts whose own risk already reached the
throttle threshold, and never blocks.

The new bundle keeps the ONNX file and records where its thresholds came from in meta.json and
card.md; with a tracking URI it is also registered in MLflow (never made champion on its own).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from moat.models.bundle import DEFAULT_BUNDLE, BundleError, BundleMeta, load_bundle, write_meta
from moat.models.bundle_source import register_bundle, resolve_model
from moat.models.thresholds import FENCE, ActionTargets, OperatorChoice, operator_thresholds
from moat.models.traces import iter_events


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traffic", required=True, nargs="+", type=Path, help="the operator's unlabelled traffic: trace files (.jsonl or .jsonl.gz) in the contract's event format; labels, if any, are ignored")
    p.add_argument("--model", help="bundle to calibrate: a directory, models:/NAME@ALIAS or bentoml:TAG (default: the shipped model)")
    p.add_argument("--out", required=True, type=Path, help="directory for the calibrated bundle (must not exist or be empty)")
    p.add_argument("--block-share", type=float, default=0.001, help="most accounts of this traffic that may ever be blocked")
    p.add_argument("--perturb-share", type=float, default=0.005, help="most accounts that may ever be perturbed or blocked")
    p.add_argument("--action-share", type=float, default=0.01, help="most accounts that may ever be acted on (throttle or above)")
    p.add_argument("--fence", type=float, default=FENCE, help="accounts above Q3 + FENCE x IQR of logit own risk are trimmed before taking quantiles")
    p.add_argument("--tracking-uri", help="register the new bundle in this MLflow registry (default: MLFLOW_TRACKING_URI if set; otherwise not registered)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check(args: argparse.Namespace) -> ActionTargets:
    for path in args.traffic:
        if not path.is_file():
            raise BundleError(f"--traffic {path}: no such file")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise BundleError(f"--out {args.out}: exists and is not an empty directory")
    if not args.fence > 0:
        raise BundleError(f"--fence: must be a positive number of interquartile ranges, got {args.fence}")
    try:
        return ActionTargets(block=args.block_share, perturb=args.perturb_share, action=args.action_share)
    except ValueError as exc:
        raise BundleError(f"--block-share/--perturb-share/--action-share: {exc}") from exc


def account_own_risk(bundle: Path, traffic: list[Path], progress: bool) -> tuple[dict[str, float], list[int]]:
    """Each account's highest own risk over the traffic, and the events per file. Each file is
    replayed from empty in-memory state in its own recorded time, as `moat replay` scores it:
    calibration never writes into a shared store a service may be using (MOAT_STATE)."""
    from moat.serving.scorer import Scorer
    from moat.serving.settings import ServingSettings

    best: dict[str, float] = {}
    counts = []
    for path in traffic:
        scorer = Scorer(ServingSettings(mode="shadow", state="memory", time_source="caller"), bundle=bundle)
        n = 0
        with tqdm(desc=f"scoring {path.name}", unit="ev", disable=not progress) as bar:
            for event, risk in scorer.own_risk_stream(iter_events(path)):
                # max() keeps whichever side it met first when one is NaN; a faulty network's
                # NaN must stay, so that `run` sees and says it.
                prev = best.get(event.account_id, 0.0)
                best[event.account_id] = math.nan if math.isnan(risk) or math.isnan(prev) else max(prev, risk)
                n += 1
                bar.update()
        counts.append(n)
    return best, counts


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_calibrated(src: Path, meta: BundleMeta, out: Path, choice: OperatorChoice, provenance: dict) -> BundleMeta:
    digest = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:8]
    new = meta.model_copy(
        update={
            "model_version": f"{meta.model_version}-cal{digest}",
            "thresholds": choice.thresholds,
            "provenance": provenance,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "model.onnx", out / "model.onnx")
    write_meta(out, new)
    card = (src / "card.md").read_text(encoding="utf-8") if (src / "card.md").is_file() else f"# Model card: {meta.model_version}\n"
    rep = provenance["report"]
    files = "\n".join(f"| {t['file']} | {t['events']} | {t['sha256'][:12]} |" for t in provenance["traffic"])
    card += (
        f"\n## Operator calibration ({new.model_version})\n"
        f"Thresholds re-chosen by `moat calibrate` on the operator's unlabelled traffic; the network is {meta.model_version}'s, unchanged.\n\n"
        f"| file | events | sha256 |\n|---|---|---|\n{files}\n\n"
        f"Accounts: {rep['accounts']}, of which {rep['trimmed']} were not used for the quantiles: outside the fence (x{provenance['fence']} IQR) or in a separated top cluster ({rep['top_cluster']}).\n"
        f"Targets (share of accounts ever reaching the action): block {provenance['targets']['block']}, perturb {provenance['targets']['perturb']}, any action {provenance['targets']['action']}.\n"
        f"Thresholds: throttle {choice.thresholds.throttle}, perturb {choice.thresholds.perturb}, block {choice.thresholds.block} "
        f"(before: {meta.thresholds.throttle}, {meta.thresholds.perturb}, {meta.thresholds.block}).\n"
        f"On this traffic: {rep['ever_acted_share']:.4f} of accounts ever acted on, {rep['ever_blocked_share']:.4f} ever blocked; "
        f"accounts within 0.5 logit of each threshold: {rep['near_threshold']}.\n"
    )
    (out / "card.md").write_text(card, encoding="utf-8")
    return new


def run(args: argparse.Namespace) -> int:
    try:
        targets = _check(args)
        src = resolve_model(args.model) if args.model else DEFAULT_BUNDLE
        meta, _ = load_bundle(src)
    except BundleError as exc:
        print(f"moat calibrate: error: {'--model ' if args.model and str(exc).startswith(args.model) else ''}{exc}", file=sys.stderr)
        return 2
    best, counts = account_own_risk(src, args.traffic, progress=not args.no_progress)
    if not best:
        print("moat calibrate: error: --traffic holds no events", file=sys.stderr)
        return 2
    import numpy as np

    risk = np.fromiter(best.values(), dtype=np.float64, count=len(best))
    finite = np.isfinite(risk)
    if not finite.all():
        # A model fault, not traffic: one NaN made every quantile NaN and trimmed everyone.
        print(f"moat calibrate: warning: {int((~finite).sum())} of {len(risk)} accounts have a non-finite risk (the bundle's network gave NaN or inf); they are left out", file=sys.stderr)
        risk = risk[finite]
        if not len(risk):
            print("moat calibrate: error: no account has a finite risk; check the bundle (--model)", file=sys.stderr)
            return 2
    choice = operator_thresholds(risk, targets, fence=args.fence)
    provenance = {
        "base_model_version": meta.model_version,
        "traffic": [{"file": p.name, "sha256": _sha256(p), "events": n} for p, n in zip(args.traffic, counts)],
        "events": sum(counts),
        "targets": {"block": targets.block, "perturb": targets.perturb, "action": targets.action},
        "fence": args.fence,
        "report": choice.report(),
    }
    new = write_calibrated(src, meta, args.out, choice, provenance)
    print(json.dumps(choice.report(), indent=2))
    print(f"moat calibrate: wrote {new.model_version} to {args.out} (thresholds throttle {new.thresholds.throttle}, perturb {new.thresholds.perturb}, block {new.thresholds.block})", file=sys.stderr)
    if choice.ever_acted > 2 * targets.action:
        # Trimmed accounts are left to be acted on: a campaign, or a benign population of its
        # own (a tenant's many accounts) that only a person can tell apart.
        print(f"moat calibrate: warning: these thresholds would act on {choice.ever_acted:.1%} of the accounts ({choice.cluster} in a separated top cluster, "
              f"{choice.trimmed - choice.cluster} outside the fence), above the {targets.action:.1%} target: review them in shadow mode before enforcing", file=sys.stderr)
    blocked = round(choice.ever_blocked * choice.accounts)
    if choice.ever_blocked > 2 * targets.block and blocked > 1:
        # The trimmed tail is left above the block threshold: a few attackers, or a heavy tail
        # of benign accounts, and blocking is the action a false positive costs most.
        print(f"moat calibrate: warning: these thresholds would block {choice.ever_blocked:.2%} of the accounts ({blocked}), above the {targets.block:.2%} target: "
              "review them in shadow mode before enforcing", file=sys.stderr)
    registered = register_bundle(args.out, args.tracking_uri, tags={"calibrated_from": meta.model_version})
    if registered:
        print(f"moat calibrate: registered as {registered}", file=sys.stderr)
    return 0
