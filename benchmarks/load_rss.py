"""Resident memory of the load test's server processes, sampled while the load runs."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from monolith_ps.processes import rss_bytes

__all__ = ["RssSampler"]

_RSS_INTERVAL = 0.5  # seconds between RSS samples


class RssSampler:
    """Samples the RSS of named processes every ``_RSS_INTERVAL`` s until ``stop_at``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}

    def __call__(self, start_at: float, stop_at: float) -> None:
        max_samples = int((stop_at - time.time()) / _RSS_INTERVAL) + 20
        for _ in range(max_samples):
            now = time.time()
            if now > stop_at:
                break
            if now >= start_at:
                for name, pid in self.pids.items():
                    with contextlib.suppress(OSError, RuntimeError):  # gone or exiting
                        self.samples[name].append((now - start_at, rss_bytes(pid)))
            time.sleep(_RSS_INTERVAL)

    def report(self, seconds: float) -> dict[str, Any]:
        """Per process: RSS at the start, half-way and the end, the peak, and the growth
        over the second half (median of the last 10 % of samples vs. around half-way)."""
        out = {}
        for name, samples in self.samples.items():
            if len(samples) < 4:
                continue
            t = np.array([s[0] for s in samples])
            mb = np.array([s[1] for s in samples]) / 2**20
            mid = mb[(t >= 0.45 * seconds) & (t <= 0.55 * seconds)]
            end = mb[t >= 0.9 * seconds]
            mid_mb = float(np.median(mid)) if mid.size else float(mb[len(mb) // 2])
            end_mb = float(np.median(end)) if end.size else float(mb[-1])
            step = max(1, len(samples) // 12)
            out[name] = {
                "start_mb": float(mb[0]),
                "half_mb": mid_mb,
                "end_mb": end_mb,
                "peak_mb": float(mb.max()),
                "second_half_growth_pct": 100.0 * (end_mb - mid_mb) / mid_mb,
                "series": [[round(float(a), 1), round(float(b), 1)]
                           for a, b in zip(t[::step], mb[::step], strict=True)],
            }  # fmt: skip
        return out


# ---------------------------------------------------------------- reference servers
