"""The demo's table and plot, one row (one x position) per window of the stream.

``OnlineLoop`` reports per training step: window i trained, window i + 1 scored through
serving. Here each window of the stream gets one row that holds what happened to its own
ratings: trained on (progressive AUC, the rows and sync wait after it) and scored by the
model trained through the window before (serving AUC, keys found). The table and the plot
read the same rows, so a window's serving AUC sits on the same row and at the same x.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from pathlib import Path

from examples.movielens.stream import WindowReport

__all__ = ["StreamWindow", "format_table", "plot", "stream_windows"]


@dataclasses.dataclass(frozen=True)
class StreamWindow:
    """One window of the stream: its training (None for the last, only scored) and its
    serving (None for the first, which no model had seen before)."""

    window: int
    first_timestamp: int
    events: int
    train_auc: float | None
    sync_seconds: float | None  # the wait until serving had this window's updates
    training_rows: int | None  # after training this window
    serving_rows: int | None  # after serving had synced this window
    serving_auc: float | None  # of this window's events, served by the model before it
    serving_found: float | None


def stream_windows(reports: Sequence[WindowReport]) -> list[StreamWindow]:
    """Rows for windows 0 .. len(reports) (one more than the reports: the last is scored)."""
    out = []
    for w in range(len(reports) + 1):
        trained = reports[w] if w < len(reports) else None
        served = reports[w - 1] if w >= 1 else None
        if trained is not None:
            start, events = trained.first_timestamp, trained.train_events
        else:
            start, events = served.serve_first_timestamp, served.serve_events
        out.append(
            StreamWindow(
                window=w,
                first_timestamp=start,
                events=events,
                train_auc=trained.train_auc if trained else None,
                sync_seconds=trained.sync_seconds if trained else None,
                training_rows=trained.training_rows if trained else None,
                serving_rows=trained.serving_rows if trained else None,
                serving_auc=served.serving_auc if served else None,
                serving_found=served.serving_found if served else None,
            )
        )
    return out


_COLUMNS = (
    ("window", "window", "{}"),
    ("from (UTC)", "first_timestamp", "{}"),
    ("events", "events", "{}"),
    ("train AUC", "train_auc", "{:.4f}"),
    ("serving AUC", "serving_auc", "{:.4f}"),
    ("found", "serving_found", "{:.1%}"),
    ("sync wait s", "sync_seconds", "{:.2f}"),
    ("train rows", "training_rows", "{}"),
    ("serving rows", "serving_rows", "{}"),
)


def _dates(windows: Sequence[StreamWindow]) -> list[str]:
    """Each window's start as a date, or with the time of day when two share a date."""
    fmt = "%Y-%m-%d"
    days = [_utc(w.first_timestamp, fmt) for w in windows]
    if len(set(days)) < len(days):
        fmt = "%Y-%m-%d %H:%M"
    return [_utc(w.first_timestamp, fmt) for w in windows]


def _utc(timestamp: int, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(fmt)


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(reports: Sequence[WindowReport], markdown: bool = False) -> str:
    """The per-window table, aligned for a terminal or as Markdown."""
    windows = stream_windows(reports)
    header = [name for name, _, _ in _COLUMNS]
    rows = []
    for window, date in zip(windows, _dates(windows), strict=True):
        rows.append(
            [date if attr == "first_timestamp" else _cell(getattr(window, attr), fmt)
             for _, attr, fmt in _COLUMNS]
        )  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt_row = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, rows)])


def plot(reports: Sequence[WindowReport], path: Path, title: str) -> None:
    """AUC of each window's ratings (served by the model of the window before, and
    progressively while training on it), with the sync wait after it below, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = stream_windows(reports)
    served = [w for w in windows if w.serving_auc is not None]
    trained = [w for w in windows if w.train_auc is not None]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([w.window for w in served], [w.serving_auc for w in served], "o-",
             label="serving PS (model trained through the window before)")  # fmt: skip
    top.plot([w.window for w in trained], [w.train_auc for w in trained], "s--",
             label="training PS, progressive")  # fmt: skip
    top.axhline(0.5, color="grey", lw=0.8, ls=":")
    top.set_ylabel("AUC of the window's ratings")
    top.set_title(title)
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.bar([w.window for w in trained], [w.sync_seconds for w in trained], width=0.6,
               color="tab:green")  # fmt: skip
    bottom.set_ylabel("sync wait (s)\nafter training")
    bottom.set_xticks([w.window for w in windows])
    # "2017-07-14 13:20" as "2017", "07-14", "13:20" on lines of their own: narrow ticks.
    labels = [f"{w.window}\n" + date.replace("-", "\n", 1).replace(" ", "\n")
              for w, date in zip(windows, _dates(windows), strict=True)]  # fmt: skip
    bottom.set_xticklabels(labels, fontsize=7, rotation=90 if len(windows) > 40 else 0)
    bottom.set_xlabel("stream window (and the date, UTC, of its first rating)")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
