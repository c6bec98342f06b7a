"""Tiered tables: lookups over Zipf-distributed keys against the all-in-memory table.

One process, dim 64 float32 with Adagrad state (512 payload bytes a row), ``--rows`` live
rows (default 200,000). Keys are drawn Zipf(``--exponent``, default 1.1) over the rows in a
random order (so hot keys are spread over the table), in batches of 8,192. For each memory
budget (1/16, 1/8, 1/4, 1/2 of the table's in-memory bytes) a tiered table is filled like
the reference, warmed up with the same traffic (four times the batches of one timed run,
so the cold file's segments near their steady share of holes), then timed:

- ``find_or_insert``: the training lookup; cold rows it touches are promoted (or only lent
  to the call when ranked below the rows last demoted), and the hot tier demotes its least
  recently used rows (``--eviction lfu``: least counted) past the budget.
- ``find``: the serving lookup; read-only, cold rows are read where they lie.

The reference is an all-in-memory table of the same config and rows, timed in the same run,
interleaved with ours. Times are CPU time of the benchmark thread (``time.thread_time``:
page faults count, waiting for a core on a shared machine does not); each figure is the
best of ``--repeats``. Reported per budget and operation: rows/s and ratio to the reference,
cold-hit rate (keys served from the cold tier over keys looked up) and time per cold hit;
promotions and demotions per lookup, the hot tier's arrays against the budget, the cold
tier's memory (index, keys, metadata, segment buffer) and the process's resident memory,
all of it and in parts: its own memory (``RssAnon``) and mapped files (``RssFile`` and
``RssShmem``), where the cold file's pages count (the cold tier reads its rows through a
mapping of the file; the kernel can reclaim those pages, and every budget's table in the
run maps its own file).

Per cold hit: the time a tiered lookup takes beyond the reference's, over its cold hits,
against a second reference run in the same process: reading a cold row's bytes (values
and optimizer state) with ``pread`` at random offsets of a page-cached file of as many rows
(what fetching one row with a system call costs at the least), and, reported beside it,
copying them from a read-only shared mapping of that file (what the cold tier does).

    python benchmarks/tier_bench.py --json results/tier_bench.json [--rows 200000] [--eviction lfu]
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))

from numba import njit, types  # noqa: E402
from report import write_result

from monolith_ps.processes import rss_bytes  # noqa: E402
from monolith_ps.table_config import TableConfig  # noqa: E402
from ps_server.table import EmbeddingTable  # noqa: E402
from ps_server.table.tiering import hot_row_bytes  # noqa: E402

DIM = 64
BATCH = 8192
FRACTIONS = (0.0625, 0.125, 0.25, 0.5)
GOAL = 0.3  # find_or_insert rows/s over the reference, at budget 1/8
_PREAD = types.ExternalFunction(
    "pread", types.int64(types.int32, types.voidptr, types.uint64, types.int64)
)


@njit(nogil=True, cache=True)
def _pread_records(fd, offsets, out):
    """Read ``out.shape[1]`` bytes at each offset into the rows of ``out``; bytes read."""
    total = 0
    for i in range(offsets.shape[0]):
        total += _PREAD(fd, out[i].ctypes.data, out.shape[1], offsets[i])
    return total


def cold_read_seconds(
    directory: str, record: int, rows: int, reads: int, repeats: int
) -> tuple[float, float]:
    """CPU seconds per read of ``record`` bytes at random record offsets of a page-cached
    file of ``rows`` records (best of ``repeats``): with ``pread``, and copied from a
    read-only shared mapping of the file."""
    rng = np.random.default_rng(3)
    fd, path = tempfile.mkstemp(dir=directory, prefix="cold-read-")
    try:
        os.unlink(path)
        chunk = np.ones(record * 4096, np.uint8).tobytes()
        for lo in range(0, rows, 4096):  # written now, so the page cache holds it
            os.pwrite(fd, chunk[: record * min(4096, rows - lo)], lo * record)
        offsets = rng.integers(0, rows, reads).astype(np.int64) * record
        out = np.empty((reads, record), np.uint8)
        _pread_records(fd, offsets[:16], out[:16])
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            if _pread_records(fd, offsets, out) != reads * record:
                raise OSError("short read of the cold-read reference file")
            best = min(best, time.thread_time() - start)
        with mmap.mmap(fd, rows * record, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            mapped = np.frombuffer(m, np.uint8).reshape(rows, record)
            slots = offsets // record
            np.take(mapped, slots, axis=0, out=out)  # the page tables, as the tier has them
            best_mapped = float("inf")
            for _ in range(repeats):
                start = time.thread_time()
                np.take(mapped, slots, axis=0, out=out)
                best_mapped = min(best_mapped, time.thread_time() - start)
            del mapped
        return best / reads, best_mapped / reads
    finally:
        os.close(fd)


def zipf_batches(order: np.ndarray, exponent: float, count: int, seed: int) -> list[np.ndarray]:
    """``count`` batches of the keys in ``order`` (most popular first) whose popularity
    ranks follow Zipf."""
    rng = np.random.default_rng(seed)
    rows = order.shape[0]
    out = []
    for _ in range(count):
        ranks = rng.zipf(exponent, BATCH * 2)
        ranks = ranks[ranks <= rows][:BATCH]
        while ranks.shape[0] < BATCH:  # rare: the tail fell past the table
            more = rng.zipf(exponent, BATCH)
            ranks = np.concatenate([ranks, more[more <= rows]])[:BATCH]
        out.append(order[ranks - 1])
    return out


def fill(table: EmbeddingTable, rows: int) -> None:
    for lo in range(0, rows, BATCH):  # a batch larger than the hot limit overshoots it
        table.find_or_insert(np.arange(lo, min(lo + BATCH, rows), dtype=np.uint64), now=1.0)


def timed(call, batches: list[np.ndarray]) -> float:
    """Rows per second of ``call`` over ``batches`` (thread CPU time)."""
    start = time.thread_time()
    for keys in batches:
        call(keys)
    return sum(b.shape[0] for b in batches) / max(time.thread_time() - start, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--exponent", type=float, default=1.1)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eviction", choices=("lru", "lfu"), default="lru")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    base = TableConfig(name="t", dim=DIM, optimizer="adagrad", eviction=args.eviction)
    reference = EmbeddingTable(base)
    fill(reference, args.rows)
    # the table's in-memory bytes per row, as the budget counts them
    per_row = hot_row_bytes(DIM, reference.state_width, np.float32)
    data_bytes = per_row * args.rows
    # one popularity order for every draw; each repeat looks up batches of its own, so a
    # repeat does not find the rows the one before it brought into the hot tier
    order = np.random.default_rng(0).permutation(args.rows).astype(np.uint64)
    warm = zipf_batches(order, args.exponent, 4 * args.batches, seed=1)
    measured = [
        zipf_batches(order, args.exponent, args.batches, seed=2 + r) for r in range(args.repeats)
    ]
    for keys in warm:
        reference.find_or_insert(keys, now=2.0)
    results = []
    with tempfile.TemporaryDirectory(prefix="tier-bench-") as cold_dir:
        record = (DIM + reference.state_width) * 4  # a cold row: values and state
        pread_s, mapped_s = cold_read_seconds(cold_dir, record, args.rows, 100_000, args.repeats)
        for fraction in FRACTIONS:
            budget = int(data_bytes * fraction)
            config = TableConfig(
                name="t", dim=DIM, optimizer="adagrad", eviction=args.eviction,
                memory_budget_bytes=budget, cold_dir=cold_dir,
            )  # fmt: skip
            table = EmbeddingTable(config)
            fill(table, args.rows)
            for keys in warm:
                table.find_or_insert(keys, now=2.0)
            best: dict[str, float] = {}
            moved = dict.fromkeys(("lookups", "cold_hits", "promoted", "demoted"), 0)
            counts = {"find_or_insert": dict(moved), "find": dict(moved)}
            for batches in measured:
                for name, t in (("reference", reference), ("tiered", table)):
                    gc.collect()
                    calls = (
                        ("find_or_insert", lambda k, t=t: t.find_or_insert(k, now=3.0)),
                        ("find", t.find),
                    )
                    for op, call in calls:
                        before = t.stats()
                        rate = timed(call, batches)
                        best[f"{name} {op}"] = max(best.get(f"{name} {op}", 0), rate)
                        if t is table:
                            after = t.stats()
                            for k in moved:
                                counts[op][k] += after[k] - before[k]
            tiers = table.tier_stats()
            row = {"budget_fraction": fraction, "budget_bytes": budget}
            row.update({f"{k} rows/s": round(v) for k, v in best.items()})
            for op, c in counts.items():
                cold_rate = c["cold_hits"] / c["lookups"]
                extra = 1 / best[f"tiered {op}"] - 1 / best[f"reference {op}"]
                per_hit = extra / cold_rate if cold_rate else 0.0
                row[f"{op} ratio"] = best[f"tiered {op}"] / best[f"reference {op}"]
                row[f"{op} cold-hit rate"] = cold_rate
                row[f"{op} seconds per cold hit"] = per_hit
                row[f"{op} per cold hit / pread reference"] = per_hit / pread_s
            lookups = counts["find_or_insert"]["lookups"]
            row.update(
                {
                    "promoted per lookup": counts["find_or_insert"]["promoted"] / lookups,
                    "demoted per lookup": counts["find_or_insert"]["demoted"] / lookups,
                    "hot rows": tiers["hot_rows"],
                    "hot row limit": tiers["hot_row_limit"],
                    "cold rows": tiers["cold_rows"],
                    "hot arrays MB": tiers["hot_bytes"] / 1e6,
                    "cold tier memory MB": tiers["cold_memory_bytes"] / 1e6,
                    "cold file MB": tiers["cold_bytes"] / 1e6,
                    "process RSS MB": rss_bytes(os.getpid()) / 1e6,
                    "process RssAnon MB": rss_bytes(os.getpid(), "RssAnon") / 1e6,
                    "process RssFile+RssShmem MB": sum(
                        rss_bytes(os.getpid(), f) for f in ("RssFile", "RssShmem")
                    )
                    / 1e6,
                }
            )
            results.append(row)
            del table
            gc.collect()
    report = {
        "rows": args.rows,
        "dim": DIM,
        "exponent": args.exponent,
        "eviction": args.eviction,
        "batch": BATCH,
        "all-in-memory table MB": reference.memory_bytes() / 1e6,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "budgets": results,
        "pread reference seconds per read": pread_s,
        "mapped copy reference seconds per read": mapped_s,
        "goal": f"find_or_insert ratio >= {GOAL} at budget 1/8",
    }
    print(
        f"{args.rows} rows, dim {DIM}, Zipf {args.exponent}, {args.eviction.upper()}, "
        "all-in-memory table "
        f"{report['all-in-memory table MB']:.0f} MB\n"
    )
    print(
        "| budget | find_or_insert rows/s (ratio) | cold-hit rate | us per cold hit (x pread) "
        "| find rows/s (ratio) | cold-hit rate | us per cold hit (x pread) "
        "| hot arrays MB / budget MB | cold tier memory MB | RSS MB (anon + file) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = [f"1/{round(1 / r['budget_fraction'])}"]
        for op in ("find_or_insert", "find"):
            cells += [
                f"{r[f'tiered {op} rows/s'] / 1e6:.2f} M ({r[f'{op} ratio']:.2f})",
                f"{r[f'{op} cold-hit rate']:.3f}",
                f"{r[f'{op} seconds per cold hit'] * 1e6:.2f} "
                f"({r[f'{op} per cold hit / pread reference']:.1f})",
            ]
        cells += [
            f"{r['hot arrays MB']:.1f} / {r['budget_bytes'] / 1e6:.1f}",
            f"{r['cold tier memory MB']:.1f}",
            f"{r['process RSS MB']:.0f} ({r['process RssAnon MB']:.0f} + "
            f"{r['process RssFile+RssShmem MB']:.0f})",
        ]
        print("| " + " | ".join(cells) + " |")
    ref = results[0]
    print(
        f"\nreference (all in memory): find_or_insert "
        f"{ref['reference find_or_insert rows/s'] / 1e6:.2f} M rows/s, find "
        f"{ref['reference find rows/s'] / 1e6:.2f} M rows/s; cold-read reference: "
        f"{pread_s * 1e6:.2f} us per pread of a {record}-byte row at a random offset "
        f"of a page-cached file, {mapped_s * 1e6:.2f} us per copy of one from a mapping "
        "of a page-cached file"
    )
    if args.json:
        write_result(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
