"""Fixtures for snapshot tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def snap_root(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"
