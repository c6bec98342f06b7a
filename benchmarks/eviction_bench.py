"""Per-call cost of LRU eviction at ``max_rows``: the pool against ranking every row.

Per size in ``--sizes``, two tables (dim 16, SGD) fill up to that ``max_rows``; then each
call is a ``find_or_insert`` of ``--batch`` keys, ``--new`` of them new (the rest uniformly
random live keys), which evicts as many rows. One table evicts through its pool (what the
server runs), the other ranks every row at each call (the reference, what it ran before);
the calls alternate between the two so they see the same machine, and must leave both
tables with the same rows and counters. Reported per case: the eviction's time per call
(mean, p50, p99, max) and the whole lookup's mean, CPU time of this thread.

    python benchmarks/eviction_bench.py --json results/eviction_bench.json
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import benchmark_parser, markdown_table, publish  # noqa: E402

from monolith_ps.table_config import TableConfig  # noqa: E402
from ps_server.table import EmbeddingTable, eviction  # noqa: E402

DIM = 16
WARMUP = 3  # calls before the timed ones (compilation, first ranking)


def _table(rows: int, full_ranking: bool) -> tuple[EmbeddingTable, list[float]]:
    """A full LRU table of ``rows`` rows, and the list its evictions' times go to."""
    config = TableConfig(name="t", dim=DIM, optimizer="sgd", max_rows=rows, eviction="lru")
    table = EmbeddingTable(config)
    fill = np.arange(rows, dtype=np.uint64)
    for lo in range(0, rows, 65_536):
        table.find_or_insert(fill[lo : lo + 65_536])
    run: Callable[[], None] = table._eviction.run
    if full_ranking:

        def run() -> None:
            eviction.evict_over_limit(table._t, None)

    spent: list[float] = []

    def timed() -> None:
        start = time.thread_time()
        run()
        spent.append(time.thread_time() - start)

    table._eviction.run = timed
    return table, spent


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds[WARMUP:]) * 1e3
    return {
        "mean": round(float(ms.mean()), 3),
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
        "max": round(float(ms.max()), 3),
    }


def _measure(rows: int, batch: int, new: int, calls: int, seed: int) -> dict[str, object]:
    tables = {"pool": _table(rows, False), "full ranking": _table(rows, True)}
    lookups: dict[str, list[float]] = {name: [] for name in tables}
    rng = np.random.default_rng(seed)
    next_key = rows
    for _ in range(calls + WARMUP):
        live = tables["pool"][0].keys()
        keys = np.concatenate(
            [rng.choice(live, batch - new), np.arange(next_key, next_key + new, dtype=np.uint64)]
        )
        next_key += new
        rng.shuffle(keys)
        for name, (table, _) in tables.items():
            start = time.thread_time()
            table.find_or_insert(keys)
            lookups[name].append(time.thread_time() - start)
    (pooled, _), (full, _) = tables["pool"], tables["full ranking"]
    same = np.array_equal(np.sort(pooled.keys()), np.sort(full.keys())) and (
        pooled.stats() == full.stats()
    )
    return {
        "rows": rows,
        "batch": batch,
        "new_keys": new,
        "calls": calls,
        "same_rows_and_stats": bool(same),
        "eviction_ms": {name: _stats(spent) for name, (_, spent) in tables.items()},
        "lookup_ms": {name: _stats(t) for name, t in lookups.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 2_000_000])
    parser.add_argument("--batch", type=int, default=8_192, help="keys per lookup")
    parser.add_argument("--new", type=int, nargs="+", default=[512, 8_192], help="new keys")
    parser.add_argument("--calls", type=int, default=60, help="timed calls per case")
    args = parser.parse_args(argv)
    cases = [
        _measure(rows, args.batch, new, args.calls, seed=rows + new)
        for rows in args.sizes
        for new in args.new
    ]
    result = {"benchmark": "eviction", "dim": DIM, "cases": cases}
    lines = []
    for c in cases:
        pool, full = c["eviction_ms"]["pool"], c["eviction_ms"]["full ranking"]
        lookup = c["lookup_ms"]
        lines.append(
            [
                f"{c['rows']:,} rows, {c['new_keys']:,} of {c['batch']:,} keys new",
                f"{pool['mean']} / {pool['p50']} / {pool['p99']} / {pool['max']}",
                f"{full['mean']} / {full['p50']} / {full['p99']} / {full['max']}",
                f"{full['mean'] / pool['mean']:.1f}x",
                f"{lookup['pool']['mean']} / {lookup['full ranking']['mean']}",
                "yes" if c["same_rows_and_stats"] else "NO",
            ]
        )
    header = [
        "case",
        "pool eviction: mean / p50 / p99 / max (ms)",
        "full ranking: mean / p50 / p99 / max (ms)",
        "full ranking / pool (mean)",
        "lookup mean: pool / full ranking (ms)",
        "same rows",
    ]
    publish(result, markdown_table(header, lines), args.json)
    return 0 if all(c["same_rows_and_stats"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
