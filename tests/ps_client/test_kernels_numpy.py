"""The numpy kernels give exactly what the Numba kernels give, and the client works
without Numba, prometheus-client, kubernetes, PyYAML and tqdm installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from monolith_ps.routing import shard_of
from ps_client import kernels, kernels_numpy

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("num_shards", [1, 3, 8])
def test_route_keys_matches(rng, num_shards):
    keys = rng.integers(0, 500, size=2000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    want = kernels.route_keys(keys, num_shards)
    got = kernels_numpy.route_keys(keys, num_shards)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)
    grouped, bounds, _ = got
    for s in range(num_shards):
        assert (shard_of(grouped[bounds[s] : bounds[s + 1]], num_shards) == s).all()


def test_mix64_scatter_and_segment_sum_match(rng):
    keys = rng.integers(0, 2**63, size=1000, dtype=np.uint64)
    np.testing.assert_array_equal(kernels_numpy.mix64(keys) % np.uint64(7), shard_of(keys, 7))
    position = rng.integers(0, 50, size=300)
    source = rng.standard_normal((20, 4)).astype(np.float32)
    want, got = np.zeros((300, 4), np.float32), np.zeros((300, 4), np.float32)
    kernels.scatter_answer(source, kernels.HALF_TO_F32, 10, position, want)
    kernels_numpy.scatter_answer(source, kernels_numpy.HALF_TO_F32, 10, position, got)
    np.testing.assert_array_equal(want, got)
    bits = source.astype(np.float16).view(np.uint16)
    kernels.scatter_answer(bits, kernels.HALF_TO_F32, 30, position, want)
    kernels_numpy.scatter_answer(bits, kernels_numpy.HALF_TO_F32, 30, position, got)
    np.testing.assert_array_equal(want, got)
    widened = source.astype(np.float16).astype(np.float32)
    in_part = (position >= 30) & (position < 50)
    np.testing.assert_array_equal(got[in_part], widened[position[in_part] - 30])
    grads = rng.standard_normal((300, 4)).astype(np.float32)
    want, got = np.zeros((50, 4), np.float32), np.zeros((50, 4), np.float32)
    kernels.segment_sum(position, grads, want)
    kernels_numpy.segment_sum(position, grads, got)
    np.testing.assert_array_equal(want, got)


def test_feature_id_hashes_match(rng):
    slots = rng.integers(0, 16, size=400, dtype=np.uint64)
    values = rng.integers(0, 2**64 - 1, size=400, dtype=np.uint64)
    want, got = np.empty(400, np.uint64), np.empty(400, np.uint64)
    kernels.fids_of_ints(slots, values, 48, want)
    kernels_numpy.fids_of_ints(slots, values, 48, got)
    np.testing.assert_array_equal(want, got)
    words = [bytes(rng.integers(0, 256, size=n, dtype=np.uint8)) for n in rng.integers(0, 40, 400)]
    offsets = np.zeros(401, np.int64)
    np.cumsum([len(w) for w in words], out=offsets[1:])
    buffer = np.frombuffer(b"".join(words), np.uint8)
    kernels.fids_of_bytes(slots, buffer, offsets, 48, want)
    kernels_numpy.fids_of_bytes(slots, buffer, offsets, 48, got)
    np.testing.assert_array_equal(want, got)


# Runs in a fresh interpreter where the server and agent dependencies cannot be imported.
_WITHOUT_CLUSTER_DEPS = """
import importlib.abc, sys

BLOCKED = {"numba", "llvmlite", "prometheus_client", "kubernetes", "yaml", "tqdm"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())

import numpy as np
import ps_client
from ps_client import PSClient, make_fid
from ps_client import batch_ops

assert not batch_ops.ACCELERATED
keys = make_fid(1, np.array([17, 42, 42, 7]))
with PSClient([sys.argv[1]]) as client:
    rows = client.lookup("item_id", keys)
    client.push("item_id", keys, np.ones_like(rows))
    after = client.lookup("item_id", keys)
assert rows.shape == (4, 4) and not np.array_equal(rows, after)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert loaded == [], loaded
from ps_client.trainer import ProgressBar
with ProgressBar(3) as bar:  # no tqdm: no bar, and no error
    bar.update(1, loss=0.5)
from monolith_ps.cli import main
assert main(["server", "--role", "training", "--shard-index", "0", "--num-shards", "1",
             "--config", "tables.yaml"]) == 2
print("ok")
"""


def test_the_client_works_without_the_cluster_dependencies(server_factory):
    server = server_factory("training")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WITHOUT_CLUSTER_DEPS), server.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert "pip install 'monolith-ps[cluster]'" in result.stderr
