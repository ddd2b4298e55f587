"""Which accounts' own risk opened the corroboration gate on their last scored request.

A dependent window (an address block, a key carrying part of an account's traffic) needs the
network only when the request's own risk opens the gate, which is known only after the own
windows ran. So a live request whose gate opens costs two network calls, and each call's fixed
cost (about 100 us on one CPU thread for this small graph) is most of what a one-request call
costs. An account's gate seldom changes from one request to the next (on dev-spread, 95% of
requests with a dependent window open or keep shut the gate as the account's previous request
did), so the live path sends the dependent windows of accounts whose gate was open last time
in the same call as the own windows. The hint changes only what the network is asked for,
never a score: a guessed window that turns out not to be needed is dropped, as if never run,
and a needed one that was not guessed runs in a second call, as without hints.

Bounded: only open gates are kept, least recently opened dropped first, so the hints hold at
most `size` accounts (the ones being acted on) whatever the traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class GateHints:
    def __init__(self, size: int = 16384) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._open: OrderedDict[str, None] = OrderedDict()
        # Dependent windows, by how the guess went: sent early and needed, sent early for
        # nothing (the cost of a wrong guess), needed but not guessed (a second call).
        self.hits = self.wasted = self.missed = 0

    def __len__(self) -> int:
        return len(self._open)

    def expects_open(self, account: str) -> bool:
        return account in self._open

    def count(self, guessed: np.ndarray, needed: np.ndarray) -> None:
        """Tally one call's dependent windows: which were guessed, which the gate needed."""
        self.hits += int(np.count_nonzero(guessed & needed))
        self.wasted += int(np.count_nonzero(guessed & ~needed))
        self.missed += int(np.count_nonzero(needed & ~guessed))

    def tally(self, guessed: bool, needed: bool, windows: int) -> None:
        """`count` for one request, whose dependent windows share its account's guess and gate."""
        if guessed and needed:
            self.hits += windows
        elif guessed:
            self.wasted += windows
        elif needed:
            self.missed += windows

    def learn(self, accounts: Sequence[str], opened: Sequence[bool]) -> None:
        """Record each request's outcome, in request order (a later request of the same account
        overrides an earlier one)."""
        for account, was_open in zip(accounts, opened, strict=True):
            if was_open:
                self._open[account] = None
                self._open.move_to_end(account)
                if len(self._open) > self.size:
                    self._open.popitem(last=False)
            else:
                self._open.pop(account, None)
