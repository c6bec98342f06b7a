"""PyTorch adapter: PS tables as embedding layers (install the ``torch`` extra).

``PSEmbeddings`` looks each table's keys up once per batch (deduplicated, pad keys
skipped) and hands back leaf tensors laid out like the keys; when backward has the
gradients of the batch's rows, it pushes them to the PS in one request, duplicates
summed, and the server's optimizer applies them. Dense layers stay ordinary torch
parameters with a torch optimizer::

    embeddings = PSEmbeddings(client, ["user", "movie"], pad_key=0)
    rows = embeddings({"user": user_keys, "movie": movie_keys})  # tensors (n, dim)
    loss = loss_fn(model(rows), labels, reduction="sum")  # summed, not mean: see below
    loss.backward()           # pushes the row gradients to the PS
    optimizer.step()          # the dense parameters

The PS applies the pushed gradients unscaled (``PSClient.push``): backpropagate the
batch's summed loss, the scale its sparse optimizers (Adagrad, FTRL, ...) are tuned for.
A mean loss divides every row's update by the batch size. If the dense layers want a mean,
scale their gradients (or their learning rate) instead.

``prefetch(next_keys)`` starts the next batch's lookup in the background while this
batch computes; rows read that way may miss this batch's update (one step stale).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ps_client.unique_keys import UniqueKeys, keys_for, unique_per_table

__all__ = ["PSEmbedding", "PSEmbeddings"]


def _as_keys(keys: Any) -> np.ndarray:
    if isinstance(keys, torch.Tensor):
        if keys.dtype not in (torch.int64, torch.uint64):
            raise TypeError(f"key tensors must be int64 or uint64, got {keys.dtype}")
        keys = keys.detach().cpu().numpy()
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu":
        raise TypeError(f"keys must be integers, got dtype {keys.dtype}")
    return keys.astype(np.uint64, copy=False)  # int64 views of uint64 IDs keep their bits


class PSEmbeddings(torch.nn.Module):
    """Rows of several PS tables for one batch; their gradients go back to the PS.

    ``store`` is a ``PSClient`` (training role) or a ``LocalStore``. In eval mode or
    under ``torch.no_grad()`` nothing is pushed.
    """

    def __init__(
        self, store: Any, tables: Sequence[str], pad_key: int | None = None, dtype: Any = None
    ) -> None:
        super().__init__()
        if not tables:
            raise ValueError("PSEmbeddings needs at least one table")
        self.store = store
        self.tables = tuple(tables)
        self.pad_key = pad_key
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._prefetched: tuple[dict[str, UniqueKeys], concurrent.futures.Future] | None = None
        self.rows_pushed = 0  # unique rows pushed since construction
        self.pushes = 0

    def _unique(self, keys_by_table: Mapping[str, Any]) -> dict[str, UniqueKeys]:
        unknown = set(keys_by_table) - set(self.tables)
        if unknown:
            raise KeyError(f"table {sorted(unknown)[0]!r} is not one of {', '.join(self.tables)}")
        keys = {table: _as_keys(table_keys) for table, table_keys in keys_by_table.items()}
        return unique_per_table(keys, self.pad_key, self.store)

    def _lookup(self, unique: Mapping[str, UniqueKeys]) -> dict[str, np.ndarray]:
        return self.store.lookup_many({t: keys_for(self.store, u) for t, u in unique.items()})

    def prefetch(self, keys_by_table: Mapping[str, Any]) -> None:
        """Start looking up the rows of a coming batch; its ``forward`` will use them."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ps-prefetch")
        unique = self._unique(keys_by_table)
        self._prefetched = (unique, self._pool.submit(self._lookup, unique))

    def _rows(self, unique: dict[str, UniqueKeys]) -> dict[str, np.ndarray]:
        if self._prefetched is not None:
            ready, future = self._prefetched
            self._prefetched = None
            rows = future.result()
            if ready.keys() == unique.keys() and all(
                np.array_equal(ready[t].unique, unique[t].unique) for t in unique
            ):
                return rows
        return self._lookup(unique)

    def forward(self, keys_by_table: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Per table, a tensor of ``keys.shape + (dim,)`` rows (zeros at pad keys)."""
        unique = self._unique(keys_by_table)
        found = self._rows(unique)
        track = self.training and torch.is_grad_enabled()
        leaves = {
            table: torch.from_numpy(np.ascontiguousarray(found[table], dtype=np.float32))
            .to(self.dtype)
            .requires_grad_(track)
            for table in unique
        }
        out = {}
        for table, u in unique.items():
            leaf = leaves[table]
            # One zero row at the end stands for every pad key.
            padded = torch.cat([leaf, leaf.new_zeros((1, leaf.shape[1]))])
            index = torch.from_numpy(np.where(u.inverse < 0, u.unique.size, u.inverse))
            out[table] = padded[index]
        if track:
            names = list(leaves)
            torch.autograd.graph.register_multi_grad_hook(
                [leaves[t] for t in names],
                lambda grads: self._push(unique, names, grads),
                mode="all",
            )
        return out

    def _push(
        self,
        unique: Mapping[str, UniqueKeys],
        names: Sequence[str],
        grads: Sequence[torch.Tensor | None],
    ) -> None:
        batch = {
            table: (
                keys_for(self.store, unique[table]),
                grad.detach().to(torch.float32).cpu().numpy(),
            )
            for table, grad in zip(names, grads, strict=True)
            if grad is not None and unique[table].unique.size
        }
        if batch:
            self.store.push_many(batch)
            self.pushes += 1
            self.rows_pushed += sum(int(unique[table].unique.size) for table in batch)

    def close(self) -> None:
        """Stop the prefetch thread (the store stays open)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class PSEmbedding(torch.nn.Module):
    """One PS table as an embedding layer: ``layer(keys) -> keys.shape + (dim,)``."""

    def __init__(self, store: Any, table: str, pad_key: int | None = None, dtype: Any = None):
        super().__init__()
        self.table = table
        self.embeddings = PSEmbeddings(store, [table], pad_key=pad_key, dtype=dtype)

    def forward(self, keys: Any) -> torch.Tensor:
        return self.embeddings({self.table: keys})[self.table]

    def prefetch(self, keys: Any) -> None:
        self.embeddings.prefetch({self.table: keys})
