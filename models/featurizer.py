"""Runs one event through summarisation and every scope's window, against a state store.

This is the single featurisation path: the serving Scorer and training's data building both
call `Featurizer.step`, so a model sees in production exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.events import Event
from models.features import ScopeState, Summary, summarize, window
from models.state import StateStore


@dataclass(frozen=True)
class ScopeWindow:
    scope: str
    key: str
    feats: np.ndarray  # float32[n, N_FEATURES]; the last row is this request
    tokens: np.ndarray  # int64[n, N_TOKENS]


@dataclass(frozen=True)
class Step:
    summary: Summary
    campaign: int
    windows: list[ScopeWindow]


class Featurizer:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def step(self, event: Event) -> Step:
        s = summarize(event)
        campaign = self.store.campaign(s.shape, s.account_id, s.ts)
        windows = []
        for scope, key in s.scope_keys():

            def apply(state: ScopeState, scope: str = scope) -> tuple[np.ndarray, np.ndarray]:
                return window(state, s, campaign, scope)

            feats, tokens = self.store.update(scope, key, s.ts, apply)
            windows.append(ScopeWindow(scope, key, feats, tokens))
        return Step(s, campaign, windows)
