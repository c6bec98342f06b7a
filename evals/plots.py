"""What the evals' plots share: pyplot on a file backend, the AUC series, axes, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["AUC_SERIES", "finish_axes", "pyplot", "save_figure"]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# What the AUC plots show: metric, label, colour.
AUC_SERIES = (
    ("test_auc", "test, all events", "tab:red"),
    ("test_auc_seen_users", "test, users seen in training", "tab:blue"),
    ("train_auc", "progressive, training part", "tab:green"),
)


def finish_axes(
    ax: Any, title: str, legend: str, xlabel: str | None = None, ylabel: str | None = None
) -> None:
    """Title, axis labels, light grid and a small legend at ``legend`` (a matplotlib
    location)."""
    ax.set_title(title)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)


def save_figure(fig: Any, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` as a PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
