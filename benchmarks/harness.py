"""Timing helpers shared by the suites: warm up, repeat, report the median and IQR.

Medians, not means: on a small, shared machine a few runs get preempted and a mean
follows them. Tiny calls are timed in adaptive inner loops so one sample spans at
least ``min_sample_s`` and timer resolution stops mattering. The garbage collector is
off while a sample runs, so a collection triggered by someone else's garbage is not
billed to the call being measured.
"""
from __future__ import annotations

import gc
import importlib
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Seconds per call: median and interquartile range over ``samples``."""

    median: float
    q1: float
    q3: float
    samples: list = field(repr=False)
    inner: int = 1

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3,
                "repeat": len(self.samples), "inner": self.inner}


def _quartiles(xs):
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _sample(fn, inner):
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner
    finally:
        if enabled:
            gc.enable()


def _calibrate(fn, warmup, min_sample_s):
    """(inner loop count, seconds per call of the last try): warm up, then double the inner
    loop until one sample lasts min_sample_s."""
    for _ in range(warmup):
        fn()
    inner = 1
    while True:
        t = _sample(fn, inner)
        if t * inner >= min_sample_s or inner >= 1 << 20:
            return inner, t
        inner *= 2 if t * inner * 10 > min_sample_s else 8


def measure(fn, *, repeat=7, warmup=1, min_sample_s=0.02, max_total_s=3.0) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeat`` samples.

    The inner loop count doubles until one sample lasts ``min_sample_s``; the number of
    samples shrinks (never below 3) when ``repeat`` of them would exceed ``max_total_s``.
    """
    inner, t = _calibrate(fn, warmup, min_sample_s)
    samples = [t]
    budget = max(3, min(repeat, int(max_total_s / max(t * inner, 1e-9))))
    while len(samples) < budget:
        samples.append(_sample(fn, inner))
    q1, med, q3 = _quartiles(samples)
    return Timing(med, q1, q3, samples, inner)


def measure_interleaved(fns: dict, *, repeat=7, warmup=1, min_sample_s=0.02,
                        max_total_s=6.0, settle_s=0.0) -> dict:
    """Time several engines doing the same work, one sample of each in turn, so that every
    engine's median comes from the same stretch of time: on a shared machine whose speed
    drifts, their ratios then hold even when the absolute times move. {name: Timing}.

    `settle_s` is a pause before each sample: multi-threaded peers whose pools spin for a
    while after a call (OpenBLAS's do, for about 0.1 s) would otherwise take cores from
    the engine timed next. After the pause one untimed call wakes the engine's own threads:
    some VM schedulers place a thread that wakes after a long idle on its waker's CPU (here
    a two-thread conv2d called after 10 ms or more of idle ran on one core), and the sample
    is meant to time the engine, not that first placement."""
    inner = {}
    for name, fn in fns.items():
        n, t = _calibrate(fn, warmup, min_sample_s)
        inner[name] = (n, t * n)
    round_s = sum(seconds for _, seconds in inner.values())
    rounds = max(3, min(repeat, int(max_total_s / max(round_s, 1e-9))))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
                fn()
            samples[name].append(_sample(fn, inner[name][0]))
    out = {}
    for name, xs in samples.items():
        q1, med, q3 = _quartiles(xs)
        out[name] = Timing(med, q1, q3, xs, inner[name][0])
    return out


def measure_once(fn) -> float:
    """Seconds for a single call of something that cannot be repeated cheaply (a compile)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()


def optional(module_name):
    """The module, or None when it is not installed (peer columns are optional)."""
    try:
        return importlib.import_module(module_name)
    except Exception:  # ImportError, or a broken install of a peer
        return None


def fmt_time(seconds) -> str:
    """A time with a unit that keeps three significant figures readable."""
    if seconds is None:
        return "n/a"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def table(headers, rows) -> str:
    """A plain left-aligned text table (first column) with right-aligned numbers."""
    cells = [[str(h) for h in headers]] + [["n/a" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)
