"""Client-side CPU of a training step's keys: one deduplication per step against the two
of the path before it.

Before: ``np.unique`` (a sort) made the step's unique keys, and ``PSClient.lookup_many`` and
``push_many`` each deduplicated and routed those again (``route_keys``). Now
``UniqueKeys.from_keys`` runs ``route_keys`` once, grouped by shard, and the client takes
them as they are. Both paths are timed here in one process on the same batches, from the
batch's keys to the per-shard key groups and gradient sums the client puts in its
requests (gather and per-key sums included); the requests themselves, the same on both
paths, are not. Reports the best of ``--repeats`` runs of ``--steps`` steps and the ratio.

    python benchmarks/client_dedup_bench.py --json results/client_dedup.json
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from report import benchmark_parser, markdown_table, publish

from ps_client.batch_ops import ACCELERATED, segment_sum
from ps_client.planning import Routed, as_keys, route, route_table
from ps_client.unique_keys import UniqueKeys

_PAD = 0


def _old_unique(keys: np.ndarray) -> UniqueKeys:
    flat = keys.ravel()
    present = flat != np.uint64(_PAD)
    unique, inverse_present = np.unique(flat[present], return_inverse=True)
    inverse = np.full(flat.shape, -1, dtype=np.int64)
    inverse[present] = inverse_present
    return UniqueKeys(unique, inverse.reshape(keys.shape))


def _old_route(u: UniqueKeys, table: str, num_shards: int) -> Routed:
    return route(as_keys(u.unique, table), num_shards)


def _step(
    keys: np.ndarray,
    rows: np.ndarray,
    make: Callable[[np.ndarray], UniqueKeys],
    routes: Callable[[UniqueKeys], Routed],
) -> None:
    """One step's key work on the client: dedup, the lookup's routing, gather, the per-key
    sums and the push's routing and sums."""
    u = make(keys)
    routes(u)  # lookup_many
    looked_up = rows[: u.unique.size]
    grads = u.gather(looked_up)
    summed = u.sum_per_key(grads)
    r = routes(u)  # push_many
    total = np.zeros((r.keys.size, summed.shape[1]), dtype=np.float32)
    segment_sum(r.position, summed, total)


def _paths(
    keys: np.ndarray, rows: np.ndarray, num_shards: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The step before (dedup, then the client's again) and now (one dedup)."""

    def before() -> None:
        _step(keys, rows, _old_unique, lambda u: _old_route(u, "t", num_shards))

    def after() -> None:
        _step(
            keys,
            rows,
            lambda k: UniqueKeys.from_keys(k, _PAD, num_shards),
            lambda u: route_table(u, "t", num_shards),
        )

    return before, after


def _best(fn: Callable[[], None], steps: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = benchmark_parser(__doc__, dim=16)
    parser.add_argument("--keys", type=int, default=4096, help="keys a step (default 4,096)")
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # a multi-hot field, 8 slots an example, a quarter of them padding; skewed IDs
    keys = rng.zipf(1.2, args.keys).astype(np.uint64).reshape(-1, 8)
    keys[rng.random(keys.shape) < 0.25] = _PAD
    rows = rng.standard_normal((args.keys, args.dim)).astype(np.float32)
    cases = []
    for num_shards in args.shards:
        old, new = _paths(keys, rows, num_shards)
        old(), new()  # compiled and warm
        before = _best(old, args.steps, args.repeats)
        after = _best(new, args.steps, args.repeats)
        cases.append(
            {
                "shards": num_shards,
                "unique_keys": int(UniqueKeys.from_keys(keys, _PAD).unique.size),
                "before_us": round(before * 1e6, 1),
                "after_us": round(after * 1e6, 1),
                "after_over_before": round(after / before, 3),
            }
        )
    result = {
        "keys": args.keys,
        "dim": args.dim,
        "numba": ACCELERATED,
        "steps": args.steps,
        "repeats": args.repeats,
        "cases": cases,
    }
    table = markdown_table(
        ["shards", "unique keys", "before (us/step)", "after (us/step)", "after/before"],
        [
            (c["shards"], c["unique_keys"], c["before_us"], c["after_us"], c["after_over_before"])
            for c in cases
        ],
    )
    publish(result, f"Client-side key work of a {args.keys:,}-key step\n\n{table}", args.json)


if __name__ == "__main__":
    main()
