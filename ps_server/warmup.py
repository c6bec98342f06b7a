"""Compile the Numba kernels ahead of time into ``NUMBA_CACHE_DIR`` (``mps warmup``).

A server loads its kernels from that cache in a fraction of a second; compiling them
takes most of a minute. ``make install`` and the image run this once, so no process
compiles at start. Without a config it warms a built-in one that covers every kernel
signature a server can use: each optimizer, both serving dtypes, admission, TTL, both
eviction policies, the learned default row, dense arrays, the sync kernels (export,
apply, delete, expire) of training and serving tables, and the routing kernels that
training, serving and the sync agent run on decoded and on their own key arrays.
``warm_up`` is the same for one server's own tables, run before it reports SERVING.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from monolith_ps import kernel_cache, wire
from monolith_ps.config import ClusterConfig, parse_config
from monolith_ps.routing import shard_of, split_by_shard
from ps_server.dense import DenseStore
from ps_server.state import ShardState
from ps_server.table import EmbeddingTable

__all__ = ["COVERAGE_CONFIG", "warm_kernels", "warm_up"]

COVERAGE_CONFIG: dict[str, Any] = {
    "tables": [
        {"name": "sgd", "dim": 4, "optimizer": "sgd", "initializer": "zeros",
         "serving_dtype": "float16"},
        {"name": "momentum", "dim": 4, "optimizer": "momentum", "initializer": "uniform",
         "admit_after": 2},
        {"name": "adagrad", "dim": 4, "optimizer": "adagrad", "initializer": "normal",
         "ttl_seconds": 60, "serving_dtype": "float16"},
        {"name": "adam", "dim": 4, "optimizer": "adam", "initializer": "learned",
         "max_rows": 64, "eviction": "lru"},
        {"name": "ftrl", "dim": 4, "optimizer": "ftrl", "initializer": "constant",
         "max_rows": 64, "eviction": "lfu"},
    ],
    "dense": [{"name": "mlp", "size": 8, "optimizer": "adam"}],
}  # fmt: skip


def warm_kernels(config: ClusterConfig | None = None) -> float:
    """Run every kernel a training and a serving server of ``config`` use, so Numba
    compiles them into its cache (or finds them there); returns the seconds it took."""
    started = time.monotonic()
    kernel_cache.refresh()
    config = config if config is not None else parse_config(COVERAGE_CONFIG)
    for role in ("training", "serving"):
        state = ShardState.from_config(config, role, 0, 1)
        warm_up(state)
        for table in state.tables.values():
            keys = np.arange(1, 9, dtype=np.uint64)
            if table.trainable:
                table.find_or_insert(keys)
                table.find_or_insert(keys)  # admitted now, where admission counts sightings
                table.apply_gradients(keys, np.ones((len(keys), table.dim), np.float32))
            delta = table.export_since(0)
            table.export_since(0, with_values=False)  # what ExportDelta selects ...
            table.find(keys, count=False)  # ... and how it reads each chunk's rows
            table.apply_delta(delta)
            table.delete(keys[:2])
            if table.trainable and table.config.ttl_seconds:
                table.expire(time.time() + 10 * table.config.ttl_seconds)
    keys = np.arange(1, 9, dtype=np.uint64)
    for routed in (keys, wire.decode_keys(wire.encode_keys(keys))):
        shard_of(routed, 2)
        split_by_shard(routed, 2)
    return time.monotonic() - started


def warm_up(state: ShardState) -> None:
    """Run every kernel the RPCs use once on scratch copies, so they are compiled (or
    loaded from Numba's cache) before health says SERVING, not during the first calls."""
    for table in state.tables.values():
        scratch = EmbeddingTable(table.config, trainable=table.trainable, dtype=table.dtype)
        # Read-only arrays over bytes, exactly as requests decode them.
        keys = wire.decode_keys(wire.encode_keys(np.array([1], dtype=np.uint64)))
        if table.trainable:
            scratch.find_or_insert(keys)
            grads, _ = wire.encode_values(np.zeros((1, table.dim), dtype=np.float32))
            scratch.apply_gradients(keys, wire.decode_values(grads, 1, table.dim))
        scratch.find(keys)
    if state.dense is not None and state.dense.trainable:
        scratch_dense = DenseStore(state.config.dense)
        scratch_dense.push(
            {
                info.name: wire.decode_values(bytes(4 * info.size), 1, info.size)[0]
                for info in scratch_dense.describe()
            }
        )
