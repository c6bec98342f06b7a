"""Fixtures: the chart rendered once per values variant."""

from __future__ import annotations

import pytest
from chart_render import VARIANTS, Rendering, load_values, render


@pytest.fixture(scope="session")
def renderings() -> dict[str, Rendering]:
    return {variant: render(load_values(variant)) for variant in VARIANTS}


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def rendering(request: pytest.FixtureRequest, renderings: dict[str, Rendering]) -> Rendering:
    return renderings[request.param]
