"""Bucketized cuckoo hash index: ``uint64`` key -> row of the table's arenas.

The index is one ``uint64`` array of shape ``(num_buckets, 8)``: a bucket is one 64-byte
line holding four keys (columns 0-3) and their ``row + 1`` (columns 4-7; 0 marks an empty
slot, so a fresh ``np.zeros`` index is empty and key 0 is a valid key). A key lives in one
of two buckets, ``mix64(key ^ SEED_A)`` and ``mix64(key ^ SEED_B)`` masked to the bucket
count (a power of two). Both hashes are seeded, so they are independent of the routing hash
``mix64(key) % num_shards``: the keys of one shard still spread over all buckets.

Inserting into two full buckets walks a random cuckoo path; a walk that fails is undone, so
a failed insert leaves the index as it was and the caller grows it. Growing doubles the
bucket count and splits each bucket in two, in place (``doubled``): an index of a huge page
or more lives in a ``RowArena`` whose view just gets longer, so growth writes each bucket
once and never holds the old and the new index at the same time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from monolith_ps.routing import mix64
from ps_server.table.arena import HUGE_PAGE, RowArena
from ps_server.table.jit import hot_kernel
from ps_server.table.prefetch import LOOKAHEAD, prefetch_at

SLOTS = 4
SEED_A = np.uint64(0x243F6A8885A308D3)
SEED_B = np.uint64(0x13198A2E03707344)
MAX_KICKS = 512
BUCKET_BYTES = 2 * SLOTS * 8


def new_index(num_buckets: int) -> np.ndarray:
    """An empty index of ``num_buckets`` (a power of two) buckets."""
    return np.zeros((num_buckets, 2 * SLOTS), dtype=np.uint64)


def new_index_arena() -> RowArena:
    """The arena an index moves into once it reaches a huge page (see :func:`doubled`)."""
    return RowArena((2 * SLOTS,), np.uint64)


def doubled(index: np.ndarray, arena: RowArena) -> np.ndarray:
    """``index`` grown to twice its buckets, every entry in its bucket of the new size.

    Below a huge page the doubled index is a new array; from there on it lives in
    ``arena`` (from :func:`new_index_arena`, one per index), which grows in place: the old
    buckets stay where they are and the new ones are untouched zero memory until the split
    writes them."""
    half = index.shape[0]
    if 2 * half * BUCKET_BYTES < HUGE_PAGE:
        grown = new_index(2 * half)
        grown[:half] = index
    else:
        if arena.capacity < half:
            arena.grow(half)[:] = index
        grown = arena.grow(2 * half)
    split_doubled(grown, half)
    return grown


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def bucket_a(key, mask):
    return mix64(key ^ SEED_A) & mask


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def bucket_b(key, mask):
    return mix64(key ^ SEED_B) & mask


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def prefetch_buckets(index, key, mask):
    """Start fetching both of ``key``'s buckets, so a later probe finds them in cache."""
    prefetch_at(index, bucket_a(key, mask), 0)
    prefetch_at(index, bucket_b(key, mask), 0)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def probe_buckets(index, key, b1, b2):
    """Row of ``key`` given its two buckets, or -1 when it is not in the index."""
    for s in range(SLOTS):
        if index[b1, s] == key and index[b1, SLOTS + s] != 0:
            return np.int64(index[b1, SLOTS + s]) - 1
    for s in range(SLOTS):
        if index[b2, s] == key and index[b2, SLOTS + s] != 0:
            return np.int64(index[b2, SLOTS + s]) - 1
    return np.int64(-1)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def probe(index, key):
    """Row of ``key``, or -1 when it is not in the index."""
    mask = np.uint64(index.shape[0] - 1)
    return probe_buckets(index, key, bucket_a(key, mask), bucket_b(key, mask))


@hot_kernel
def locate(index, keys, rows_out):
    """``rows_out[i]`` = row of ``keys[i]`` or -1, with the buckets of keys ``LOOKAHEAD``
    positions ahead already on their way into the cache (their hashes are computed again
    at the probe: cheaper than keeping them)."""
    n = keys.shape[0]
    mask = np.uint64(index.shape[0] - 1)
    for i in range(n + LOOKAHEAD):
        if i < n:
            prefetch_buckets(index, keys[i], mask)
        j = i - LOOKAHEAD
        if j >= 0:
            rows_out[j] = probe(index, keys[j])


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _place_in_free_slot(index, b, key, value):
    for s in range(SLOTS):
        if index[b, SLOTS + s] == 0:
            index[b, s] = key
            index[b, SLOTS + s] = value
            return True
    return False


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _free_slots(index, b):
    free = 0
    for s in range(SLOTS):
        if index[b, SLOTS + s] == 0:
            free += 1
    return free


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _other_bucket(index, b, s, mask):
    """The bucket a resident of slot ``s`` of bucket ``b`` could move to."""
    resident = index[b, s]
    h1 = bucket_a(resident, mask)
    return bucket_b(resident, mask) if h1 == b else h1


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _prefetch_alternates(index, mask, b1, b2):
    """Start fetching the eight buckets the residents of ``b1`` and ``b2`` could move to."""
    for k in range(2 * SLOTS):
        b = b1 if k < SLOTS else b2
        prefetch_at(index, _other_bucket(index, b, k % SLOTS, mask), 0)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def prefetch_displacement(index, key, mask):
    """When both buckets of ``key`` (already in cache) are full, start fetching the buckets
    their residents could move to, so that inserting ``key`` a few keys later does not wait
    for them. Batch kernels call it between prefetching a key's buckets and inserting it."""
    b1 = bucket_a(key, mask)
    b2 = bucket_b(key, mask)
    if _free_slots(index, b1) == 0 and _free_slots(index, b2) == 0:
        _prefetch_alternates(index, mask, b1, b2)


@njit(nogil=True, cache=True, error_model="numpy")
def _move_one_aside(index, mask, b1, b2, key, value):
    """Both buckets of ``key`` are full: if some resident's other bucket has room, move it
    there and take its slot. The eight candidate buckets are fetched together, so this costs
    about one memory round trip instead of a chain of them."""
    _prefetch_alternates(index, mask, b1, b2)
    for k in range(2 * SLOTS):
        b = b1 if k < SLOTS else b2
        s = k % SLOTS
        alt = _other_bucket(index, b, s, mask)
        if alt != b and _place_in_free_slot(index, alt, index[b, s], index[b, SLOTS + s]):
            index[b, s] = key
            index[b, SLOTS + s] = value
            return True
    return False


def new_walk(seed: int) -> np.ndarray:
    """The state of the cuckoo walks of one index: element 0 is the xorshift state that
    picks the slots to kick, the rest records a walk's path so a failed walk can be undone.
    Kernels that insert take it as an argument instead of allocating the path themselves:
    they are compiled without Numba's runtime (see ``jit``)."""
    walk = np.zeros(1 + MAX_KICKS, dtype=np.uint64)
    walk[0] = np.uint64(seed) or np.uint64(1)
    return walk


@hot_kernel
def insert(index, key, row, walk):
    """Add ``key -> row`` (the key must be absent). False, with the index unchanged, when the
    cuckoo walk found no free slot: the index must grow. ``walk`` is from :func:`new_walk`."""
    mask = np.uint64(index.shape[0] - 1)
    return insert_at(index, key, row, walk, bucket_a(key, mask), bucket_b(key, mask))


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def insert_at(index, key, row, walk, b1, b2):
    """:func:`insert` for a key whose two buckets ``b1``, ``b2`` the caller already has.

    The key goes to the emptier of its two buckets (the power of two choices keeps buckets
    from filling up, so few inserts need the cuckoo walk); only when both are full does
    :func:`_displace` move residents."""
    value = np.uint64(row + 1)
    if _free_slots(index, b2) > _free_slots(index, b1):
        b1, b2 = b2, b1
    if _place_in_free_slot(index, b1, key, value):
        return True
    return _displace(index, key, value, walk, b1, b2)


@hot_kernel
def _displace(index, key, value, walk, b1, b2):
    """Both buckets of ``key`` are full: move one resident aside, or else walk a random
    cuckoo path of at most ``MAX_KICKS`` kicks. A walk that fails is undone (False)."""
    mask = np.uint64(index.shape[0] - 1)
    if _move_one_aside(index, mask, b1, b2, key, value):
        return True
    slots = np.uint64(SLOTS)
    cur_key = key
    cur_value = value
    x = walk[0]
    b = b2 if x & np.uint64(1) else b1
    for k in range(MAX_KICKS):
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
        s = np.int64(x & np.uint64(SLOTS - 1))
        old_key = index[b, s]
        old_value = index[b, SLOTS + s]
        index[b, s] = cur_key
        index[b, SLOTS + s] = cur_value
        walk[1 + k] = b * slots + np.uint64(s)
        cur_key = old_key
        cur_value = old_value
        h1 = bucket_a(cur_key, mask)
        b = bucket_b(cur_key, mask) if b == h1 else h1
        if _place_in_free_slot(index, b, cur_key, cur_value):
            walk[0] = x
            return True
    walk[0] = x
    for k in range(MAX_KICKS - 1, -1, -1):
        b = walk[1 + k] // slots
        s = np.int64(walk[1 + k] % slots)
        placed_key = index[b, s]
        placed_value = index[b, SLOTS + s]
        index[b, s] = cur_key
        index[b, SLOTS + s] = cur_value
        cur_key = placed_key
        cur_value = placed_value
    return False


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def remove(index, key):
    """Drop ``key`` from the index; its row, or -1 when it was absent."""
    mask = np.uint64(index.shape[0] - 1)
    b = bucket_a(key, mask)
    for _ in range(2):
        for s in range(SLOTS):
            if index[b, s] == key and index[b, SLOTS + s] != 0:
                row = np.int64(index[b, SLOTS + s]) - 1
                index[b, s] = np.uint64(0)
                index[b, SLOTS + s] = np.uint64(0)
                return row
        b = bucket_b(key, mask)
    return np.int64(-1)


@njit(nogil=True, cache=True, error_model="numpy")
def split_doubled(index, half):
    """Split each of the first ``half`` buckets of ``index`` (``2 * half`` buckets, the upper
    half empty) between itself and its twin ``b + half``, in place.

    An entry sits in bucket ``h & (half - 1)`` of one of its two hashes ``h``; in the
    doubled index the same hash gives ``h & (2 * half - 1)``: bucket ``b`` or ``b + half``,
    by one bit of ``h``. Each bucket keeps the entries that stay, in slot order, at its
    front and its twin takes the others the same way, so the result is the same as
    inserting the entries into an empty index bucket by bucket: a sequential pass, no
    cuckoo walks, and never a failure.
    """
    old_mask = np.uint64(half - 1)
    split_bit = np.uint64(half)
    for b in range(half):
        stay = 0
        move = 0
        for s in range(SLOTS):
            # without branches on the hashes (half the entries move, at random): an empty
            # slot is written in place and overwritten or cleared later
            value = index[b, SLOTS + s]
            key = index[b, s]
            h_a = mix64(key ^ SEED_A)
            h_b = mix64(key ^ SEED_B)
            h = h_a if (h_a & old_mask) == np.uint64(b) else h_b
            live = np.int64(value != 0)
            up = live & np.int64((h & split_bit) != 0)
            slot = move if up else stay
            index[b + up * half, slot] = key
            index[b + up * half, SLOTS + slot] = value
            move += up
            stay += live - up
        for s in range(stay, SLOTS):
            index[b, s] = np.uint64(0)
            index[b, SLOTS + s] = np.uint64(0)


@njit(nogil=True, cache=True, error_model="numpy")
def bucket_of_keys(keys, num_buckets, out):
    """First-choice bucket of each key in an index of ``num_buckets`` buckets (for tests)."""
    mask = np.uint64(num_buckets - 1)
    for i in range(keys.shape[0]):
        out[i] = bucket_a(keys[i], mask)
