"""The PyTorch adapter against real training servers: a model whose embeddings live on the
PS trains exactly like the same model with local ``torch.nn.Embedding`` tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_client import PSClient
from ps_client.adapters.torch import PSEmbedding, PSEmbeddings

_LR = 0.05
_DIM = 4
_PAD = 0
_CONFIG = {
    "tables": [
        {"name": "user", "dim": _DIM, "optimizer": "sgd", "optimizer_args": {"lr": _LR},
         "initializer": "normal", "initializer_args": {"std": 0.3}},
        {"name": "tag", "dim": _DIM, "optimizer": "sgd", "optimizer_args": {"lr": _LR},
         "initializer": "normal", "initializer_args": {"std": 0.3}, "seed": 7},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def addresses(server_factory):
    servers = [server_factory("training", i, 2, config=_CONFIG) for i in range(2)]
    return [f"127.0.0.1:{s.port}" for s in servers]


@pytest.fixture
def client(addresses):
    with PSClient(addresses, role="training") as c:
        yield c


def _batches(seed=0, num_batches=12, n=32):
    """Users (one per example, many repeats) and a multi-hot tag list with pads; the label
    depends on both, so the model has something to learn."""
    rng = np.random.default_rng(seed)
    base = (np.uint64(seed + 1) << np.uint64(40)).item()  # fresh keys for every test
    out = []
    for _ in range(num_batches):
        users = rng.integers(0, 15, n)
        tags = rng.integers(0, 9, (n, 3))
        tags[rng.random((n, 3)) < 0.3] = -1
        labels = ((users % 3 == 0) ^ ((tags == 2).any(axis=1))).astype(np.float32)
        keys = {
            "user": (users + base + 1).astype(np.uint64),
            "tag": np.where(tags < 0, _PAD, tags + base + 100).astype(np.uint64),
        }
        out.append((keys, torch.from_numpy(labels)))
    return out


class _FM(torch.nn.Module):
    """A factorization machine with a small MLP over rows from ``embeddings``."""

    def __init__(self, embeddings: torch.nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embeddings = embeddings
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 * _DIM, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        )

    def forward(self, keys):
        rows = self.embeddings(keys)
        present = torch.from_numpy(keys["tag"] != _PAD).to(rows["tag"].dtype)
        tag = (rows["tag"] * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1)
        fields = torch.stack([rows["user"], tag], dim=1)  # (n, 2, dim)
        s = fields.sum(1)
        pairwise = 0.5 * ((s * s).sum(1) - (fields * fields).sum((1, 2)))
        return self.bias + pairwise + self.mlp(fields.flatten(1)).squeeze(1)


class _LocalEmbeddings(torch.nn.Module):
    """``torch.nn.Embedding`` tables holding given rows of given keys; the last row is padding."""

    def __init__(self, initial):
        super().__init__()
        self.keys = {t: k for t, (k, _) in initial.items()}
        self.tables = torch.nn.ModuleDict(
            {
                t: torch.nn.Embedding.from_pretrained(
                    torch.cat([torch.from_numpy(r), torch.zeros(1, _DIM)]),
                    freeze=False,
                    padding_idx=len(k),
                )
                for t, (k, r) in initial.items()
            }
        )

    def forward(self, keys):
        out = {}
        for t, k in keys.items():
            index = np.searchsorted(self.keys[t], k)
            index[k == _PAD] = len(self.keys[t])
            out[t] = self.tables[t](torch.from_numpy(index))
        return out


def _train(model, batches, params):
    optimizer = torch.optim.SGD(params, lr=_LR)
    losses = []
    for keys, labels in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(keys), labels, reduction="sum"
        )
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_ps_model_trains_exactly_like_the_local_embedding_model(client):
    batches = _batches(seed=1)
    all_keys = {
        t: np.unique(np.concatenate([k[t].ravel() for k, _ in batches])) for t in ("user", "tag")
    }
    all_keys = {t: k[k != _PAD] for t, k in all_keys.items()}
    # The rows the PS starts from (its initializer is seeded by key): the local model's too.
    initial = {t: (k, client.lookup(t, k)) for t, k in all_keys.items()}

    embeddings = PSEmbeddings(client, ["user", "tag"], pad_key=_PAD)
    on_ps = _FM(embeddings)
    local = _FM(_LocalEmbeddings(initial))
    local.load_state_dict(on_ps.state_dict(), strict=False)
    ps_losses = _train(on_ps, batches, [on_ps.bias, *on_ps.mlp.parameters()])
    local_losses = _train(local, batches, local.parameters())

    np.testing.assert_allclose(ps_losses, local_losses, rtol=1e-4)
    assert np.mean(ps_losses[-3:]) < np.mean(ps_losses[:3])  # it learned something
    assert embeddings.pushes == len(batches)
    for t, k in all_keys.items():
        trained = local.embeddings.tables[t].weight.detach().numpy()[:-1]
        np.testing.assert_allclose(client.lookup(t, k), trained, atol=1e-5)


def test_rows_are_looked_up_once_per_unique_key_and_pads_get_zeros(client):
    layer = PSEmbedding(client, "tag", pad_key=_PAD)
    keys = np.array([[5, 5, _PAD], [6, 5, _PAD]], dtype=np.uint64) + np.uint64(1 << 50)
    keys[:, 2] = _PAD
    rows = layer(keys)
    assert rows.shape == (2, 3, _DIM)
    assert torch.equal(rows[0, 0], rows[0, 1]) and torch.equal(rows[0, 0], rows[1, 1])
    assert torch.count_nonzero(rows[:, 2]) == 0
    before = client.lookup("tag", np.array([keys[0, 0], keys[1, 0]]))
    rows.sum().backward()  # d/d row = 1 per occurrence: key 5 three times, key 6 once
    after = client.lookup("tag", np.array([keys[0, 0], keys[1, 0]]))
    np.testing.assert_allclose(after, before - _LR * np.array([[3.0], [1.0]]), atol=1e-6)
    assert layer.embeddings.rows_pushed == 2


def test_nothing_is_pushed_in_eval_mode_or_without_grad(client):
    embeddings = PSEmbeddings(client, ["user"])
    keys = {"user": np.array([7, 8], dtype=np.uint64) + np.uint64(1 << 51)}
    with torch.no_grad():
        embeddings(keys)["user"].sum()
    embeddings.eval()
    out = embeddings(keys)["user"]
    assert not out.requires_grad
    assert embeddings.pushes == 0


def test_a_table_left_out_of_the_loss_does_not_hold_back_the_others(client):
    embeddings = PSEmbeddings(client, ["user", "tag"])
    keys = {
        "user": np.array([1, 2], dtype=np.uint64) + np.uint64(1 << 52),
        "tag": np.array([3], dtype=np.uint64) + np.uint64(1 << 52),
    }
    before = client.lookup("tag", keys["tag"])
    rows = embeddings(keys)
    rows["user"].sum().backward()
    assert embeddings.pushes == 1 and embeddings.rows_pushed == 2
    np.testing.assert_array_equal(client.lookup("tag", keys["tag"]), before)


def test_prefetched_rows_are_used_by_the_matching_forward(client):
    calls = []

    class Counting:
        def lookup_many(self, keys_by_table):
            calls.append({t: k.copy() for t, k in keys_by_table.items()})
            return client.lookup_many(keys_by_table)

        def push_many(self, grads):
            return client.push_many(grads)

    embeddings = PSEmbeddings(Counting(), ["user"])
    first = {"user": np.array([1, 2, 2], dtype=np.uint64) + np.uint64(1 << 53)}
    second = {"user": np.array([3], dtype=np.uint64) + np.uint64(1 << 53)}
    embeddings.prefetch(first)
    expected = client.lookup("user", first["user"])
    np.testing.assert_array_equal(embeddings(first)["user"].detach().numpy(), expected)
    assert len(calls) == 1  # the prefetch, not a second lookup
    embeddings.prefetch(second)
    embeddings(first)  # a different batch than prefetched: looked up afresh
    assert len(calls) == 3
    embeddings.close()


def test_bad_keys_are_refused():
    embeddings = PSEmbeddings(object(), ["user"])
    with pytest.raises(TypeError, match="integers"):
        embeddings({"user": np.array([1.5])})
    with pytest.raises(KeyError, match="'item'"):
        embeddings({"item": np.array([1], dtype=np.uint64)})
