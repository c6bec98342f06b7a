"""Snapshot write and restore throughput against plain ``np.save``/``np.load``.

Ours: ``SnapshotStore.write`` (CRC-32 while writing, fsync and rename per file, manifest
last) and ``SnapshotStore.restore`` (verify every byte while loading, pick the chain),
and ``merge_sections`` of a full plus an incremental rewriting 10% of its rows.
Reference, in the same run on the same arrays: ``np.save`` plus an fsync per file, and
``np.load(allow_pickle=False)``. Also the two checksum candidates, CRC-32 (zlib) and
SHA-256 (hashlib), over the same bytes. Reads hit a warm page cache for both sides.

    python benchmarks/snapshot_bench.py --rows 1000000 --dim 64 --json results/snapshot.json
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from report import benchmark_parser, markdown_table, publish

from ps_server.snapshot.content import TableSnapshot
from ps_server.snapshot.format import ServerInfo
from ps_server.snapshot.merge import merge_sections
from ps_server.snapshot.store import SnapshotStore


def _table(rows: int, dim: int) -> TableSnapshot:
    rng = np.random.default_rng(0)
    keys = rng.permutation(np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B1))
    return TableSnapshot(
        rows={
            "keys": keys,
            "versions": np.arange(1, rows + 1, dtype=np.uint64),
            "values": rng.standard_normal((rows, dim), dtype=np.float32),
            "opt_state": rng.random((rows, dim), dtype=np.float32),
            "push_counts": rng.integers(0, 1000, rows, dtype=np.uint32),
            "last_update": np.full(rows, time.time()),
        },
        since_version=0,
        complete_version=rows,
    )


def _incremental(full: TableSnapshot, fraction: float) -> TableSnapshot:
    """A later snapshot re-writing a random ``fraction`` of the rows with newer versions."""
    rng = np.random.default_rng(1)
    n = full.num_rows
    picked = rng.choice(n, int(n * fraction), replace=False)
    rows = {name: array[picked] for name, array in full.rows.items()}
    rows["versions"] = np.arange(n + 1, n + 1 + picked.size, dtype=np.uint64)
    return TableSnapshot(rows, since_version=n, complete_version=n + picked.size)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _reference_write(directory: Path, table: TableSnapshot) -> None:
    directory.mkdir()
    for name, array in table.rows.items():
        path = directory / f"{name}.npy"
        with open(path, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def _reference_read(directory: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, allow_pickle=False) for p in directory.glob("*.npy")}


def main() -> int:
    parser = benchmark_parser(__doc__, rows=1_000_000, dim=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    table = _table(args.rows, args.dim)
    nbytes = sum(a.nbytes for a in table.rows.values())
    server = ServerInfo("training", 0, 1, 1)
    base = Path(tempfile.mkdtemp(prefix="snapbench-", dir=args.dir))
    results: dict[str, float] = {}
    try:
        counter = iter(range(10**6))

        def ours_write() -> None:
            store = SnapshotStore(base / f"ours-{next(counter)}")
            store.write("full", {"t": table}, None, server)

        def ref_write() -> None:
            _reference_write(base / f"ref-{next(counter)}", table)

        results["ours_write_s"] = _best(ours_write, args.repeat)
        results["ref_write_s"] = _best(ref_write, args.repeat)
        ours_dir = next(base.glob("ours-*"))
        ref_dir = next(base.glob("ref-*"))
        results["ours_restore_s"] = _best(lambda: SnapshotStore(ours_dir).restore(), args.repeat)
        results["ref_read_s"] = _best(lambda: _reference_read(ref_dir), args.repeat)
        incr = _incremental(table, fraction=0.1)
        results["merge_s"] = _best(lambda: merge_sections([table, incr]), args.repeat)
        buffer = table.rows["values"].view(np.uint8).reshape(-1)
        results["crc32_s"] = _best(lambda: zlib.crc32(buffer), args.repeat)
        results["sha256_s"] = _best(lambda: hashlib.sha256(buffer).digest(), args.repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    mb = nbytes / 1e6
    values_mb = table.rows["values"].nbytes / 1e6
    report = {
        "rows": args.rows,
        "dim": args.dim,
        "bytes": nbytes,
        "seconds": results,
        "write_mb_s": {"ours": mb / results["ours_write_s"], "ref": mb / results["ref_write_s"]},
        "read_mb_s": {"ours": mb / results["ours_restore_s"], "ref": mb / results["ref_read_s"]},
        "ratio_write": results["ours_write_s"] / results["ref_write_s"],
        "ratio_read": results["ours_restore_s"] / results["ref_read_s"],
        "checksum_mb_s": {
            "crc32": values_mb / results["crc32_s"],
            "sha256": values_mb / results["sha256_s"],
        },
    }
    # step, our seconds' key, the reference's key, our MB/s
    steps = [
        ("write (checksum, fsync, rename, manifest) vs np.save+fsync", "ours_write_s",
         "ref_write_s", report["write_mb_s"]["ours"]),
        ("restore (verify every byte, load) vs np.load", "ours_restore_s", "ref_read_s",
         report["read_mb_s"]["ours"]),
        (f"checksum: crc32 vs sha256 ({values_mb:.0f} MB)", "crc32_s", "sha256_s",
         report["checksum_mb_s"]["crc32"]),
    ]  # fmt: skip
    rows = [
        [step, f"{results[ours]:.3f}", f"{results[ref]:.3f}",
         f"{results[ours] / results[ref]:.2f}", f"{mb_s:.0f}"]
        for step, ours, ref, mb_s in steps
    ]  # fmt: skip
    rows.insert(2, ["merge full + 10% incremental into live rows", f"{results['merge_s']:.3f}",
                    "-", "-", "-"])  # fmt: skip
    header = ["step", "ours (s)", "reference (s)", "ratio ours/ref", "ours MB/s"]
    title = f"snapshot of {args.rows} rows x dim {args.dim}: {mb:.0f} MB"
    publish(report, f"{title}\n\n{markdown_table(header, rows)}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
