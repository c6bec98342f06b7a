"""Expirable embeddings: a TTL in stream time vs rows kept and AUC (Monolith: expiry).

A table with ``ttl_seconds`` drops rows not updated for that long. The stream replays
years of ratings in a minute, so the TTL is counted in the stream's time, by default as
a fraction of the stream's span (``--ttl``; ``--ttl-days`` sets days instead): the
training part (first 80%, time order) is trained in windows, and after each window
every training shard runs its expiry (the Expire RPC) as of the window's last event.
Servers stamp updates with their wall clock; ``StreamClock`` maps the stream's time to
it, batch by batch. Expired rows leave tombstones that the sync agent carries to
serving; the rest of the stream is then scored through the serving PS. A TTL at least
as long as the training part expires nothing: it is reported as such and not run, as is
one that expired no row in any run.

    python -m evals.expiry [--data PATH] [--ttl 0,1/10,1/20,1/100,1/300] [--seeds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals import cli, dataset, plots, results, training
from evals.cluster import EvalCluster, base_config

NAME = "expiry"
TITLE = "Expiry: TTL in stream time vs rows and AUC"
_METRICS = ("rows", "rows_window_mean", "memory_bytes", "test_auc", "test_auc_seen_users",
            "train_auc", "found", "expired")  # fmt: skip


def ttl_name(ttl: dataset.StreamTime) -> str:
    return "none" if not ttl.seconds else ttl.label()


def run_one(
    args: argparse.Namespace, ttl_time: dataset.StreamTime, seed: int, work: Path, split: tuple
) -> dict[str, Any]:
    train_events, test_events, seen = split
    ttl = ttl_time.seconds
    ttl_days = ttl_time.days
    config = base_config(seed=seed, **({"ttl_seconds": ttl} if ttl else {}))
    clock = training.StreamClock()
    rows_over_time: list[int] = []
    expired_total = 0
    with EvalCluster(
        config, work / f"seed{seed}-ttl{ttl_days:g}d", args.training_shards
    ) as cluster:

        def after_window(i: int, window: Any) -> None:
            nonlocal expired_total
            if ttl:
                stream_now = float(window.timestamps[-1])
                expired_total += cluster.expire(clock.wall_time_at(stream_now - ttl) + ttl)
            rows_over_time.append(sum(cluster.rows("training").values()))

        result = training.time_split_run(
            cluster,
            train_events,
            test_events,
            seen,
            args.batch_size,
            windows=args.windows,
            after_window=after_window,
            batches=clock.batches,
        )
    return {
        "seed": seed,
        "ttl_days": ttl_days,
        "ttl": ttl_name(ttl_time),
        **result,
        "expired": expired_total,
        "rows_over_time": rows_over_time,
        "rows_window_mean": sum(rows_over_time) / len(rows_over_time),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    events, release = dataset.load_stream(args.data, args.limit)
    train_events, test_events = dataset.time_split(events, args.test_fraction)
    split = (train_events, test_events, dataset.seen_users(train_events, test_events))
    trained_span = dataset.span_seconds(train_events)
    ttls = dataset.stream_times(args.ttl, args.ttl_days, dataset.span_seconds(events))
    ttls = [dataset.StreamTime(0.0), *(t for t in ttls if t.seconds > 0)]  # "none" first
    to_run = [t for t in ttls if t.seconds < trained_span or not t.seconds]
    no_effect = [
        {"ttl": ttl_name(t), "ttl_days": t.days, "why": "at least as long as the "
         f"{trained_span / dataset.DAY:,.0f} days the training part spans"}
        for t in ttls if t not in to_run
    ]  # fmt: skip
    runs = training.seeded_runs(
        args,
        NAME,
        to_run,
        lambda seed, ttl, work: run_one(args, ttl, seed, work, split),
        lambda r: (
            f"TTL {r['ttl']}: rows {r['rows']}, "
            f"expired {r['expired']}, test AUC {r['test_auc']:.4f}"
        ),
    )
    for ttl in to_run[1:]:
        mine = [r for r in runs if r["ttl_days"] == ttl.days]
        if not any(r["expired"] for r in mine):
            no_effect.append({"ttl": ttl_name(ttl), "ttl_days": ttl.days,
                              "why": "expired no row in any run"})  # fmt: skip
            runs = [r for r in runs if r not in mine]
    summary = training.summarize_runs(runs, "ttl_days", _METRICS)
    training.compare_with_first(summary, runs, "ttl_days")
    for entry in summary:
        entry["ttl"] = next(r["ttl"] for r in runs if r["ttl_days"] == entry["ttl_days"])
    return {
        **results.run_info(NAME, args, started, release),
        "events": len(events),
        "test_fraction": args.test_fraction,
        "windows": args.windows,
        "seeds": args.seeds,
        "window_end_dates": [
            results.utc_date(w.timestamps[-1]) for w in train_events.windows(args.windows)
        ],
        "trained_span_days": trained_span / dataset.DAY,
        "ttls": [t.as_dict() for t in ttls],
        "no_effect": no_effect,
        "summary": summary,
        "runs": runs,
    }


def markdown(doc: dict[str, Any]) -> str:
    header = [
        "TTL (stream time)",
        "rows at the end",
        "vs no TTL",
        "user rows",
        "movie rows",
        "rows, mean over windows",
        "rows expired",
        *results.QUALITY_HEADER,
    ]
    rows = [
        [
            s["ttl"],
            f"{s['rows_mean']:.0f}",
            f"{s['rows_vs_first']:.0%}",
            f"{s['rows_per_table']['user']:.0f}",
            f"{s['rows_per_table']['movie']:.0f}",
            f"{s['rows_window_mean_mean']:.0f}",
            f"{s['expired_mean']:.0f}",
            *results.quality_cells(s),
        ]
        for s in doc["summary"]
    ]
    split = round(100 * (1 - doc["test_fraction"]))
    description = (
        f"{doc['events']} ratings in time order: train on the first {split}% in "
        f"{doc['windows']} windows, expiring after each as of its last event, then test on "
        f"the rest through the serving PS; {doc['seeds']} seeds. Rows: all tables of the "
        "training shards."
    )
    text = results.document(TITLE, doc, description, header, rows)
    return text + results.no_effect_note(doc, "Not results", lambda v: f"TTL {v['ttl']}")


def plot(doc: dict[str, Any], path: Path) -> None:
    plt = plots.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, s in enumerate(doc["summary"]):
        mine = [r for r in doc["runs"] if r["ttl_days"] == s["ttl_days"]]
        left.plot(
            range(1, doc["windows"] + 1),
            mine[0]["rows_over_time"],
            "o-",
            ms=3,
            label=f"TTL {s['ttl']}",
        )
        right.errorbar(s["rows_mean"], s["test_auc_mean"], yerr=s["test_auc_sd"], fmt="o",
                       capsize=4, color="tab:blue")  # fmt: skip
        right.annotate(s["ttl"].split(" (")[0], (s["rows_mean"], s["test_auc_mean"]),
                       textcoords="offset points", xytext=(6, 6 - 14 * (i % 2)),
                       fontsize=8)  # fmt: skip
    left.set_xlabel("training window (after its expiry)")
    left.set_ylabel("rows held by the training shards")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.set_xlabel("rows at the end of training")
    right.set_ylabel("test AUC (serving PS)")
    right.grid(alpha=0.3)
    fig.suptitle(TITLE)
    plots.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = cli.eval_parser(NAME, __doc__)
    ttl = p.add_mutually_exclusive_group()
    ttl.add_argument(
        "--ttl",
        type=dataset.parse_fractions,
        default=[0.0, 1 / 10, 1 / 20, 1 / 100, 1 / 300],
        help="TTLs as fractions of the stream's span, 0 = none (default 0,1/10,1/20,1/100,1/300; "
        "no TTL is always run)",
    )
    ttl.add_argument(
        "--ttl-days",
        type=cli.comma_list(float),
        default=None,
        help="TTLs in days of stream time instead, e.g. 0,730,90",
    )
    p.add_argument("--windows", type=int, default=16, help="training windows (default 16)")
    cli.add_seed_arguments(p, seeds=2, per="TTL")
    return p


def check(args: argparse.Namespace) -> None:
    if any(d < 0 for d in args.ttl_days or ()) or any(f < 0 for f in args.ttl):
        raise SystemExit("--ttl, --ttl-days: TTLs must be >= 0")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_eval(NAME, argv, parser(), run, markdown, plot, check)


if __name__ == "__main__":
    sys.exit(main())
