"""PNG plots of an evaluation: ROC, detection delay, risk over time, benign action rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moat.evals.evaluate import MOAT, Accounts, MethodRun, roc_points  # noqa: E402


def plot_roc(runs: list[MethodRun], acc: Accounts, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    for r in runs:
        fpr, tpr = roc_points(r, acc)
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=r.name, lw=2.5 if r.name == MOAT else 1.2)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.axvline(0.01, color="grey", ls=":", lw=1)
    ax.set_xlabel("benign accounts flagged (FPR, log scale)")
    ax.set_ylabel("attack accounts caught (TPR)")
    ax.set_title("Account-level ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_detection_delay(runs: list[MethodRun], acc: Accounts, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    attack = [a for a in range(len(acc.names)) if acc.labels[a] == 1]
    for r in runs:
        delays = []
        for a in attack:
            hit = np.flatnonzero(r.levels[acc.order[a]] >= 1)
            delays.append(hit[0] if len(hit) else np.inf)
        d = np.sort(np.asarray(delays, dtype=float))
        finite = d[np.isfinite(d)]
        if len(d):
            ax.step(np.r_[0, finite], np.r_[0, np.arange(1, len(finite) + 1) / len(d)], where="post", label=r.name, lw=2.5 if r.name == MOAT else 1.2)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("requests sent before the first non-allow action")
    ax.set_ylabel("share of attack accounts detected")
    ax.set_title("Detection delay (CDF)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_risk_over_time(moat: MethodRun, acc: Accounts, thresholds: dict[str, float], path: Path, per_kind: int = 2) -> None:
    fams = sorted(set(acc.families))
    picks = []
    for f in fams:
        members = sorted((a for a in range(len(acc.names)) if acc.families[a] == f), key=lambda a: -len(acc.order[a]))
        picks.extend(members[:per_kind] if len(acc.order[members[0]]) > 5 else members[:1])
    n = len(picks)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, a in zip(axes.flat, picks):
        r = moat.scores[acc.order[a]][:500]
        ax.plot(r, color="crimson" if acc.labels[a] else "seagreen", lw=1)
        for t in thresholds.values():
            if t <= 1:
                ax.axhline(t, color="grey", ls=":", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{acc.families[a]}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Moat risk by request index (first 500; dotted: action thresholds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_benign_actions(metrics: dict[str, Any], path: Path) -> None:
    per = metrics["methods"][MOAT]["per_persona"]
    names = sorted(per)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(names))
    for i, (key, color) in enumerate([("throttled", "gold"), ("perturbed", "orange"), ("blocked", "crimson")]):
        ax.bar(x + (i - 1) * 0.27, [100 * per[n][key] for n in names], width=0.27, label=f"ever {key}", color=color)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of accounts")
    ax.set_title("Benign personas acted on by Moat")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
