"""Arrival-time models: humans, services and machines.

Each model gives the gap to the next request from the current simulated time. All of their
parameters are drawn per actor by the caller, so there is no fixed gap a model could learn.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

DAY = 86400.0
HOUR = 3600.0


def _hour_of_day(t: float, tz_offset_h: float) -> float:
    return ((t / HOUR) + tz_offset_h) % 24.0


class Timing(Protocol):
    """Any arrival model: the gap in seconds from time t to the actor's next request."""

    def gap(self, rng: random.Random, t: float) -> float: ...


@dataclass
class ActiveHours:
    """A daily window of activity in the actor's local time (e.g. 9:00 for 8 hours)."""

    tz_offset_h: float
    start_h: float
    length_h: float
    weekend_share: float = 0.3  # probability a weekend day is active at all

    def is_active(self, t: float) -> bool:
        h = (_hour_of_day(t, self.tz_offset_h) - self.start_h) % 24.0
        return h < self.length_h

    def next_start(self, t: float, rng: random.Random) -> float:
        """Start of the next active window after t, with a few minutes of human slack."""
        h = _hour_of_day(t, self.tz_offset_h)
        wait = (self.start_h - h) % 24.0
        nxt = t + wait * HOUR + rng.uniform(0, 0.5 * self.length_h) * HOUR
        # Skip some weekend days. Unix day 0 was a Thursday, so (day + 3) % 7 counts from Monday.
        while (int((nxt / HOUR + self.tz_offset_h) // 24) + 3) % 7 in (5, 6) and rng.random() > self.weekend_share:
            nxt += DAY
        return nxt

    @classmethod
    def draw(cls, rng: random.Random, min_len: float = 4, max_len: float = 14) -> "ActiveHours":
        return cls(
            tz_offset_h=rng.choice([-8, -5, -3, 0, 1, 2, 3, 5.5, 8, 9, 10]),
            start_h=rng.uniform(6, 20),
            length_h=rng.uniform(min_len, max_len),
            weekend_share=rng.uniform(0.05, 0.6),
        )


@dataclass
class HumanTiming:
    """Think times within a session, idle gaps between sessions, activity only in active hours."""

    hours: ActiveHours
    think_median_s: float
    think_sigma: float
    session_end_p: float
    idle_median_s: float

    def gap(self, rng: random.Random, t: float) -> float:
        if rng.random() < self.session_end_p:
            gap = rng.lognormvariate(math.log(self.idle_median_s), 1.0)
        else:
            gap = rng.lognormvariate(math.log(self.think_median_s), self.think_sigma)
        nxt = t + max(gap, 0.5)
        if not self.hours.is_active(nxt):
            nxt = self.hours.next_start(nxt, rng)
        return nxt - t

    @classmethod
    def draw(cls, rng: random.Random) -> "HumanTiming":
        return cls(
            hours=ActiveHours.draw(rng),
            think_median_s=rng.lognormvariate(math.log(35), 0.6),
            think_sigma=rng.uniform(0.6, 1.3),
            session_end_p=rng.uniform(0.05, 0.25),
            idle_median_s=rng.lognormvariate(math.log(2400), 0.8),
        )


@dataclass
class LogNormalTiming:
    """Log-normal gaps around a median, at any hour: a developer's edit-and-retry or an agent's
    tool steps, paced by the work rather than by a clock."""

    median_s: float
    sigma: float

    def gap(self, rng: random.Random, t: float) -> float:
        return rng.lognormvariate(math.log(self.median_s), self.sigma)


@dataclass
class RateProfile:
    """Relative request rate by hour of day (24 values, mean 1) and the burstiness (CV) of gaps."""

    hourly: list[float]
    cv: float


def _diurnal(rng: random.Random) -> list[float]:
    peak = rng.uniform(0, 24)
    amp = rng.uniform(0.1, 0.9)
    raw = [1 + amp * math.cos(2 * math.pi * (h - peak) / 24) for h in range(24)]
    mean = sum(raw) / 24
    return [r / mean for r in raw]


@dataclass
class ServiceTiming:
    """Gamma-distributed gaps (Poisson when cv = 1) with a rate that follows the hour of day."""

    rate_per_s: float
    profile: RateProfile

    def gap(self, rng: random.Random, t: float) -> float:
        rate = max(self.rate_per_s * self.profile.hourly[int(_hour_of_day(t, 0.0)) % 24], 1e-6)
        shape = 1.0 / max(self.profile.cv, 0.05) ** 2
        return rng.gammavariate(shape, 1.0 / (rate * shape))

    @classmethod
    def poisson(cls, rng: random.Random, rate_per_s: float) -> "ServiceTiming":
        """Independent arrivals (many end users behind one service) with a diurnal rate."""
        return cls(rate_per_s, RateProfile(_diurnal(rng), 1.0))

    @classmethod
    def draw(cls, rng: random.Random, rate_per_s: float, library: "TimingLibrary | None" = None) -> "ServiceTiming":
        if library is not None and library.profiles:
            return cls(rate_per_s, rng.choice(library.profiles))
        return cls(rate_per_s, RateProfile(_diurnal(rng), rng.uniform(0.6, 2.5)))


@dataclass
class MachineTiming:
    """A concurrency-limited client: steady rate with jitter and occasional pauses."""

    rate_per_s: float
    jitter: float
    pause_p: float
    pause_median_s: float

    def gap(self, rng: random.Random, t: float) -> float:
        if rng.random() < self.pause_p:
            return rng.lognormvariate(math.log(self.pause_median_s), 1.0)
        base = 1.0 / self.rate_per_s
        return max(0.01, base * (1.0 + self.jitter * rng.gauss(0, 1)))

    @classmethod
    def draw(cls, rng: random.Random, rate_per_s: float, evasive: bool = False) -> "MachineTiming":
        return cls(
            rate_per_s=rate_per_s,
            jitter=rng.uniform(0.4, 1.2) if evasive else rng.uniform(0.02, 0.4),
            pause_p=rng.uniform(0.0, 0.02),
            pause_median_s=rng.uniform(60, 1800),
        )


def worker_pool(rng: random.Random) -> MachineTiming:
    """A closed-loop worker pool: a fixed number of workers, each sending its next request when the
    last one returns, so the aggregate rate is workers / latency with little jitter."""
    workers = rng.choice([1, 2, 4, 8, 16, 32, rng.randint(1, 64)])
    latency_s = rng.lognormvariate(math.log(4.0), 0.7)
    return MachineTiming(
        rate_per_s=workers / latency_s,
        jitter=rng.uniform(0.05, 0.5),
        pause_p=rng.uniform(0.0, 0.01),
        pause_median_s=rng.uniform(30, 900),
    )


@dataclass
class TimingLibrary:
    """Rate profiles fitted from real traces (`--timing-from`): ServeGen chunks or Azure LLM traces."""

    profiles: list[RateProfile] = field(default_factory=list)

    @classmethod
    def from_paths(cls, paths: list[str | Path]) -> "TimingLibrary":
        lib = cls()
        for raw in paths:
            path = Path(raw)
            files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
            if not files:
                raise ValueError(f"--timing-from {path}: no CSV files found")
            for f in files:
                lib.profiles.extend(_fit_file(f))
        if not lib.profiles:
            raise ValueError("--timing-from: no usable rate profile in the given files")
        return lib


def _fit_file(path: Path) -> list[RateProfile]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        return []
    if rows[0][0] == "TIMESTAMP":  # Azure: one row per arrival over an hour; only burstiness is usable
        from datetime import datetime

        ts = sorted(datetime.fromisoformat(r[0][:26]).timestamp() for r in rows[1:] if r[0])
        gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
        if len(gaps) < 10:
            return []
        mean = sum(gaps) / len(gaps)
        sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
        return [RateProfile([1.0] * 24, min(max(sd / mean, 0.2), 4.0))]
    if len(rows[0]) == 6:  # ServeGen (no header): window_start_s, rate_rps, cv, family, shape, scale
        by_hour = [0.0] * 24
        counts = [0] * 24
        cvs = []
        for r in rows:
            h = int(float(r[0]) // HOUR) % 24
            rate = float(r[1] or 0)
            by_hour[h] += rate
            counts[h] += 1
            if r[2] and rate > 0:
                cvs.append(float(r[2]))
        hourly = [by_hour[h] / counts[h] if counts[h] else 0.0 for h in range(24)]
        mean = sum(hourly) / 24
        if mean <= 0:
            return []
        cv = sorted(cvs)[len(cvs) // 2] if cvs else 1.0
        return [RateProfile([max(x / mean, 0.02) for x in hourly], min(max(cv, 0.2), 4.0))]
    raise ValueError(f"--timing-from {path}: unknown format (expected ServeGen or Azure trace columns)")
