"""Classical defences, run on the same trace as Moat. Each is one small class behind one
interface, registered in BASELINES, and online: an event's score uses only earlier events."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict, deque
from typing import ClassVar

import numpy as np

from moat.evals.data import EvalData


class Baseline(ABC):
    name: ClassVar[str]
    # A fixed operating point (e.g. the rate limit itself); None: pick at 1% account FPR.
    fixed_threshold: ClassVar[float | None] = None
    trained: ClassVar[bool] = False

    def fit(self, train: EvalData) -> None:
        """Learn from a labelled training trace (only baselines with `trained = True`)."""

    @abstractmethod
    def score(self, data: EvalData) -> np.ndarray:
        """A score per event, higher = more extraction-like, computed in trace order."""


BASELINES: dict[str, type[Baseline]] = {}


def register(cls: type[Baseline]) -> type[Baseline]:
    BASELINES[cls.name] = cls
    return cls


@register
class RateLimit(Baseline):
    """A fixed per-account limit of requests per minute; the score is the account's request
    count in the trailing minute over the limit (acted on above 1)."""

    name = "rate_limit"
    fixed_threshold = 1.0 + 1e-9

    def __init__(self, per_minute: int = 60) -> None:
        self.per_minute = per_minute

    def score(self, data: EvalData) -> np.ndarray:
        recent: dict[str, deque[float]] = defaultdict(deque)
        out = np.zeros(len(data))
        for i, (acc, t) in enumerate(zip(data.accounts, data.ts)):
            q = recent[acc]
            q.append(t)
            while q[0] < t - 60:
                q.popleft()
            out[i] = len(q) / self.per_minute
        return out


@register
class Prada(Baseline):
    """PRADA (Juuti et al. 2019), adapted to text: per account, the minimum L2 distance of each
    query to the account's earlier queries (hashed character trigrams); natural queries give
    roughly normal distances, synthetic ones do not. Score = 1 - Shapiro-Wilk W."""

    name = "prada"

    def __init__(self, min_queries: int = 20, memory: int = 300) -> None:
        self.min_queries, self.memory = min_queries, memory

    def score(self, data: EvalData) -> np.ndarray:
        from scipy.stats import shapiro

        growing: dict[str, list[np.ndarray]] = defaultdict(list)
        dists: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.memory))
        out = np.zeros(len(data))
        for i, acc in enumerate(data.accounts):
            x = data.chars[i]
            g = growing[acc]
            if g:
                d = float(np.sqrt(((np.asarray(g) - x) ** 2).sum(axis=1)).min())
                dists[acc].append(d)
            g.append(x)
            if len(g) > self.memory:
                g.pop(0)
            dd = dists[acc]
            if len(dd) >= self.min_queries:
                arr = np.asarray(dd)
                out[i] = 1.0 - shapiro(arr).statistic if np.ptp(arr) > 0 else 1.0
        return out


@register
class Seat(Baseline):
    """SEAT-like (Zhang et al. 2021): counts near-duplicate query pairs per account (SimHash
    similarity >= 0.9 against the account's recent queries); score = log1p(pairs so far)."""

    name = "seat"

    def __init__(self, threshold: float = 0.9, memory: int = 500) -> None:
        self.threshold, self.memory = threshold, memory

    def score(self, data: EvalData) -> np.ndarray:
        seen: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=self.memory))
        pairs: dict[str, int] = defaultdict(int)
        out = np.zeros(len(data))
        for i, acc in enumerate(data.accounts):
            h = seen[acc]
            if h:
                sims = 1.0 - np.bitwise_count(np.fromiter(h, dtype=np.uint64, count=len(h)) ^ data.simhash[i]) / 64.0
                pairs[acc] += int((sims >= self.threshold).sum())
            h.append(int(data.simhash[i]))
            out[i] = np.log1p(pairs[acc])
        return out


class _Gbm(Baseline):
    trained = True
    max_rows = 150_000

    def _x(self, data: EvalData) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: EvalData) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        rng = np.random.default_rng(0)
        idx = np.arange(len(train))
        if len(idx) > self.max_rows:
            idx = rng.choice(idx, self.max_rows, replace=False)
        y = train.labels[idx]
        w = np.where(y == 1, 0.5 / max(y.mean(), 1e-6), 0.5 / max(1 - y.mean(), 1e-6))
        self.model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=0)
        self.model.fit(self._x(train)[idx], y, sample_weight=w)

    def score(self, data: EvalData) -> np.ndarray:
        return self.model.predict_proba(self._x(data))[:, 1]


@register
class PerRequestGbm(_Gbm):
    """Gradient boosting on single-request features (parameters, lengths, client): no history."""

    name = "per_request_gbm"

    def _x(self, data: EvalData) -> np.ndarray:
        return data.own


@register
class SessionGbm(_Gbm):
    """Gradient boosting on the account's window statistics (the same per-request vectors Moat
    reads, one at a time): history as aggregates, but no sequence model."""

    name = "session_gbm"

    def _x(self, data: EvalData) -> np.ndarray:
        return data.session
