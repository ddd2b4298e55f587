"""PNG plots of an evaluation: ROC, detection delay, risk over time, benign action rates.

Each function saves its PNG and returns the (closed) figure, so tests can inspect the layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from moat.evals.evaluate import MOAT, Accounts, MethodRun, roc_points  # noqa: E402
from moat.models.metrics import auroc  # noqa: E402

# Threshold lines of the risk plot, one style per action so the legend can tell them apart.
THRESHOLD_STYLE = {"throttle": ("goldenrod", ":"), "perturb": ("darkorange", "--"), "block": ("black", "-.")}


def _save(fig: Figure, path: Path, dpi: int) -> Figure:
    # bbox_inches="tight" keeps legends placed outside the axes inside the image.
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return fig


def _legend_outside(ax: plt.Axes) -> None:
    """A legend to the right of the axes: it can never cover a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, borderaxespad=0.0)


def plot_roc(runs: list[MethodRun], acc: Accounts, path: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in runs:
        fpr, tpr = roc_points(r, acc)
        area = auroc(acc.labels, acc.max_per_account(r.scores))
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{r.name} (AUROC {area:.3f})", lw=2.5 if r.name == MOAT else 1.2)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.axvline(0.01, color="grey", ls=":", lw=1, label="1% FPR")
    ax.set_xlabel("benign accounts flagged (FPR, log scale)")
    ax.set_ylabel("attack accounts caught (TPR)")
    ax.set_title("Account-level ROC")
    _legend_outside(ax)
    return _save(fig, path, dpi=110)


def plot_detection_delay(runs: list[MethodRun], acc: Accounts, path: Path) -> Figure:
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
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("requests sent before the first non-allow action")
    ax.set_ylabel("share of attack accounts detected")
    ax.set_title("Detection delay (CDF)")
    _legend_outside(ax)
    return _save(fig, path, dpi=110)


def plot_risk_over_time(moat: MethodRun, acc: Accounts, thresholds: dict[str, float], path: Path, per_kind: int = 2) -> Figure:
    fams = sorted(set(acc.families))
    picks = []
    for f in fams:
        members = sorted((a for a in range(len(acc.names)) if acc.families[a] == f), key=lambda a: -len(acc.order[a]))
        picks.extend(members[:per_kind] if len(acc.order[members[0]]) > 5 else members[:1])
    n = len(picks)
    cols = 4
    rows = max((n + cols - 1) // cols, 1)
    # A threshold above 1 can never be reached (the action is off): it gets no line.
    shown = dict(sorted(((k, t) for k, t in thresholds.items() if t <= 1), key=lambda kv: kv[1]))
    # Constrained layout makes room for the suptitle and the legend below the grid.
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False, layout="constrained")
    for ax, a in zip(axes.flat, picks):
        r = moat.scores[acc.order[a]][:500]
        ax.plot(r, color="crimson" if acc.labels[a] else "seagreen", lw=1)
        for k, t in shown.items():
            color, ls = THRESHOLD_STYLE.get(k, ("grey", ":"))
            ax.axhline(t, color=color, ls=ls, lw=0.8)
        # Margins above 1 and below 0, so a threshold near 1 and a risk of 0 stay off the frame.
        ax.set_ylim(-0.05, 1.08)
        ax.set_title(f"{acc.families[a]}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [Line2D([], [], color="crimson", lw=1, label="attack account"), Line2D([], [], color="seagreen", lw=1, label="benign account")]
    for k, t in shown.items():
        color, ls = THRESHOLD_STYLE.get(k, ("grey", ":"))
        handles.append(Line2D([], [], color=color, ls=ls, lw=0.8, label=f"{k} threshold ({t:.3f})"))
    fig.suptitle("Moat risk by request index (first 500 requests of each account)", fontsize=9)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    return _save(fig, path, dpi=100)


def plot_benign_actions(metrics: dict[str, Any], path: Path) -> Figure:
    per = metrics["methods"][MOAT]["per_persona"]
    names = sorted(per)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(names))
    top = 0.0
    for i, (key, color) in enumerate([("throttled", "gold"), ("perturbed", "orange"), ("blocked", "crimson")]):
        values = [100 * per[n][key] for n in names]
        top = max([top, *values])
        ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=f"ever {key}", color=color)
    # A share of accounts is never negative; with nothing to show, a 0-1% axis reads as "none"
    # rather than matplotlib's symmetric range around 0.
    ax.set_ylim(0, max(1.0, 1.15 * top))
    if top == 0:
        ax.text(0.5, 0.5, "no benign account was acted on", transform=ax.transAxes, ha="center", va="center", fontsize=9, color="grey")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of accounts")
    ax.set_title("Benign personas acted on by Moat")
    _legend_outside(ax)
    return _save(fig, path, dpi=110)


def plot_redteam(metrics: dict[str, Any], path: Path) -> Figure:
    """Share of each hand-written family's accounts acted on and blocked (`moat.evals.redteam`);
    a family with no accounts (no time to send in the background's span) shows no bars."""
    families = metrics["families"]
    names = sorted(families)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    y = np.arange(len(names))
    for i, (key, color) in enumerate([("acted_on", "darkorange"), ("blocked", "crimson")]):
        ax.barh(y + (i - 0.5) * 0.38, [100 * (families[n][key] or 0.0) for n in names], height=0.38, color=color, label=key.replace("_", " "))
    ax.set_xlim(0, 100)
    ax.set_yticks(y, [f"{n} ({families[n]['accounts']})" for n in names], fontsize=8)
    ax.invert_yaxis()  # first family at the top, as in the report's table
    ax.set_xlabel("% of the family's accounts")
    ax.set_title("Hand-written attackers: acted on and blocked")
    _legend_outside(ax)
    return _save(fig, path, dpi=110)
