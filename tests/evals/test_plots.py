"""The evaluation plots are readable: legends beside the curves, not over them; thresholds off
the frame; no negative axis for shares of accounts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from moat.evals.evaluate import Accounts, MethodRun
from moat.evals.plots import plot_benign_actions, plot_detection_delay, plot_redteam, plot_risk_over_time, plot_roc

THRESHOLDS = {"throttle": 0.96, "perturb": 0.98, "block": 1.0}


@pytest.fixture(scope="module")
def synthetic() -> tuple[list[MethodRun], Accounts]:
    """Four benign and four attack accounts of two families each; two methods, one better."""
    rng = np.random.default_rng(0)
    spec = [("chat_user", 0), ("app_backend", 0), ("logit_probe", 1), ("sybil_campaign", 1)] * 2
    lengths = rng.integers(6, 40, size=len(spec))
    index = np.repeat(np.arange(len(spec)), lengths)
    bounds = np.r_[0, np.cumsum(lengths)]
    acc = Accounts(
        names=[f"a{i}" for i in range(len(spec))], index=index, labels=np.array([y for _, y in spec], dtype=np.uint8),
        families=[f for f, _ in spec], order=[np.arange(bounds[i], bounds[i + 1]) for i in range(len(spec))],
    )
    runs = []
    for name, sep in (("moat", 0.6), ("rate_limit", 0.1)):
        scores = np.clip(rng.normal(0.3 + sep * acc.labels[index], 0.1), 0, 1)
        runs.append(MethodRun(name, scores, np.digitize(scores, [0.8, 0.9, 0.95]).astype(np.int8)))
    return runs, acc


def _persona_metrics(throttled: float) -> dict:
    shares = {"throttled": throttled, "perturbed": throttled / 2, "blocked": 0.0}
    return {"methods": {"moat": {"per_persona": {"chat_user": shares, "app_backend": {"throttled": 0.0, "perturbed": 0.0, "blocked": 0.0}}}}}


def _legend_clear_of_axes(fig: Figure) -> None:
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())


@pytest.mark.parametrize("plot", [
    lambda runs, acc, path: plot_roc(runs, acc, path),
    lambda runs, acc, path: plot_detection_delay(runs, acc, path),
    lambda runs, acc, path: plot_benign_actions(_persona_metrics(0.02), path),
], ids=["roc", "detection_delay", "benign_actions"])
def test_legend_does_not_cover_the_plot(plot, synthetic, tmp_path: Path) -> None:
    runs, acc = synthetic
    fig = plot(runs, acc, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    _legend_clear_of_axes(fig)


def test_roc_legend_names_each_method_with_its_auroc(synthetic, tmp_path: Path) -> None:
    runs, acc = synthetic
    labels = [t.get_text() for t in plot_roc(runs, acc, tmp_path / "roc.png").axes[0].get_legend().get_texts()]
    assert labels[0].startswith("moat (AUROC ") and labels[1].startswith("rate_limit (AUROC ")


@pytest.mark.parametrize(("thresholds", "legend_thresholds"), [
    (THRESHOLDS, ["throttle", "perturb", "block"]),
    # A threshold above 1 means the action is off: no line, no legend entry.
    ({"throttle": 0.9, "perturb": 1.0001, "block": 1.0001}, ["throttle"]),
], ids=["all-on", "only-throttle"])
def test_risk_over_time_has_a_legend_and_thresholds_off_the_frame(synthetic, tmp_path: Path, thresholds, legend_thresholds) -> None:
    runs, acc = synthetic
    fig = plot_risk_over_time(runs[0], acc, thresholds, tmp_path / "risk.png")
    assert len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["attack account", "benign account"]
    assert [label.split()[0] for label in labels[2:]] == legend_thresholds
    used = [ax for ax in fig.axes if ax.lines]
    assert len(used) == len(set(acc.families)) * 2  # two accounts of each family
    for ax in used:
        bottom, top = ax.get_ylim()
        # A risk of 0 and a threshold at 1 must both sit inside the frame, not on it.
        assert bottom < 0 and top > 1
        assert len(ax.lines) == 1 + len(legend_thresholds)


@pytest.mark.parametrize(("throttled", "expected_ylim"), [
    (0.0, (0.0, 1.0)),  # nothing acted on: 0 to 1%, not matplotlib's -0.04 to 0.04
    (0.05, (0.0, 5.75)),  # 5% throttled: bars from 0, headroom above the tallest
], ids=["all-zero", "some"])
def test_benign_actions_axis_starts_at_zero(tmp_path: Path, throttled: float, expected_ylim: tuple[float, float]) -> None:
    fig = plot_benign_actions(_persona_metrics(throttled), tmp_path / "bars.png")
    assert fig.axes[0].get_ylim() == pytest.approx(expected_ylim)


REDTEAM = {
    "families": {
        "b-family": {"accounts": 6, "acted_on": 0.5, "blocked": 1 / 6},
        "a-family": {"accounts": 40, "acted_on": 1.0, "blocked": 0.0},
        "c-family": {"accounts": 0, "acted_on": None, "blocked": None},  # no time to send
    }
}


def test_redteam_bars_are_each_familys_shares_in_table_order(tmp_path: Path) -> None:
    fig = plot_redteam(REDTEAM, tmp_path / "redteam.png")
    assert (tmp_path / "redteam.png").stat().st_size > 0
    ax = fig.axes[0]
    acted, blocked = ax.containers
    assert [b.get_width() for b in acted] == pytest.approx([100.0, 50.0, 0.0])
    assert [b.get_width() for b in blocked] == pytest.approx([0.0, 100 / 6, 0.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a-family (40)", "b-family (6)", "c-family (0)"]
    assert ax.get_xlim() == (0, 100)
    _legend_clear_of_axes(fig)
