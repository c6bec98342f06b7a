"""Fixtures for table tests: a config factory with small defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from monolith_ps.table_config import TableConfig
from ps_server.table import EmbeddingTable


@pytest.fixture
def make_table() -> Callable[..., EmbeddingTable]:
    """``make_table(dim=4, optimizer="sgd", ...)``: a training table with small defaults."""

    def make(*, trainable: bool = True, dtype: Any = None, **fields: Any) -> EmbeddingTable:
        fields.setdefault("name", "t")
        fields.setdefault("dim", 4)
        fields.setdefault("optimizer", "sgd")
        fields.setdefault("optimizer_args", {"lr": 0.5})
        return EmbeddingTable(TableConfig(**fields), trainable=trainable, dtype=dtype)

    return make
