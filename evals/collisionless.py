"""Collisionless embedding tables against hashed ones (Monolith: embedding collisions).

Our tables give every feature ID its own row. The common alternative is a fixed-size
table: IDs are hashed into buckets and IDs that share a bucket share a row. Here the
hashing is applied to the feature IDs before they reach the PS (``hash_keys``), with
bucket counts of 1/10, 1/4 and 1x the number of distinct IDs of each hashed table
(``user`` and ``movie``, the high-cardinality ID features; genres and context buckets
have under a hundred IDs each). Each variant trains once through the stream's first
80% (time order) and is scored on the last 20% through the serving PS, with several
seeds (initializers and hash salts): mean and spread of the test AUC, and the paired
difference to the collisionless run of the same seed.

    python -m evals.collisionless [--data PATH] [--seeds 3] [--limit N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals import cli, dataset, plots, results, training
from evals.cluster import base_config

NAME = "collisionless"
TITLE = "Collisionless vs hashed embedding tables"
_FRACTIONS = (1.0, 0.25, 0.1)  # buckets per distinct ID


def variants(
    events: Any, tables: Sequence[str], fractions: Sequence[float]
) -> list[dict[str, Any]]:
    """The collisionless variant, then one hashed variant per fraction."""
    distinct = {t: dataset.distinct_keys(events, t) for t in tables}
    out = [{"name": "collisionless", "fraction": None, "buckets": {}, "distinct": distinct}]
    for fraction in fractions:
        buckets = {t: max(1, math.ceil(fraction * n)) for t, n in distinct.items()}
        label = "1x" if fraction == 1.0 else f"1/{round(1 / fraction)}"
        out.append(
            {"name": f"hashed {label}", "fraction": fraction, "buckets": buckets,
             "distinct": distinct}
        )  # fmt: skip
    return out


def apply_variant(events: Any, variant: dict[str, Any], seed: int) -> Any:
    """``events`` with the variant's tables' IDs hashed into its buckets (salted by seed)."""
    if not variant["buckets"]:
        return events
    buckets = variant["buckets"]

    def transform(table: str, keys: np.ndarray) -> np.ndarray:
        if table not in buckets:
            return keys
        salt = (seed + 1) * 0x9E3779B97F4A7C15 + zlib.crc32(table.encode())
        return dataset.hash_keys(keys, buckets[table], salt)

    return events.map_keys(transform)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    events, release = dataset.load_stream(args.data, args.limit)
    tables = [t for t in args.hashed_tables.split(",") if t]
    all_variants = variants(events, tables, args.fractions)
    seen = dataset.seen_users(*dataset.time_split(events, args.test_fraction))

    def run_one(seed: int, variant: dict[str, Any], work: Path) -> dict[str, Any]:
        hashed = apply_variant(events, variant, seed)
        train_events, test_events = dataset.time_split(hashed, args.test_fraction)
        config = base_config(seed=seed)
        folder = work / f"seed{seed}-{variant['name'].replace(' ', '_').replace('/', '_')}"
        result = training.train_and_score(args, config, folder, train_events, test_events, seen)
        return {"seed": seed, "variant": variant["name"], **result}

    runs = training.seeded_runs(
        args,
        NAME,
        all_variants,
        run_one,
        lambda r: f"{r['variant']:>14}: test AUC {r['test_auc']:.4f}, rows {r['rows']}",
    )
    summary = summarize(runs, all_variants)
    return {
        **results.run_info(NAME, args, started, release),
        "events": len(events),
        "test_fraction": args.test_fraction,
        "seeds": args.seeds,
        "hashed_tables": tables,
        "variants": all_variants,
        "summary": summary,
        "runs": runs,
    }


_METRICS = ("test_auc", "test_auc_seen_users", "test_auc_new_users", "train_auc", "rows",
            "test_logloss")  # fmt: skip


def summarize(runs: list[dict[str, Any]], all_variants: list[dict[str, Any]]) -> list[dict]:
    """Per variant: mean and spread of each metric, and the paired test AUC difference to
    the collisionless run of the same seed."""
    base = {r["seed"]: r["test_auc"] for r in runs if r["variant"] == "collisionless"}
    summary = training.summarize_runs(runs, "variant", _METRICS)
    for entry, variant in zip(summary, all_variants, strict=True):
        mine = [r for r in runs if r["variant"] == variant["name"]]
        deltas = [r["test_auc"] - base[r["seed"]] for r in mine if r["seed"] in base]
        entry["delta_auc_mean"], entry["delta_auc_sd"] = results.mean_and_spread(deltas)
        entry["worse_in_seeds"] = sum(d < 0 for d in deltas)
        entry["buckets"] = variant["buckets"]
    return summary


def markdown(doc: dict[str, Any]) -> str:
    tables = doc["hashed_tables"]
    distinct = doc["variants"][0]["distinct"]
    header = [
        "variant",
        *(f"{t} rows or buckets" for t in tables),
        "rows (all tables)",
        "test AUC (mean ± sd)",
        "Δ AUC vs collisionless (paired)",
        "seeds worse",
        "test AUC, users seen in training",
        "test AUC, new users",
        "progressive AUC (training part)",
    ]
    rows = []
    for s in doc["summary"]:
        sizes = [str(s["buckets"].get(t, f"{distinct[t]} (one per ID)")) for t in tables]
        delta = (
            "—"
            if s["variant"] == "collisionless"
            else f"{s['delta_auc_mean']:+.4f} ± {s['delta_auc_sd']:.4f}"
        )
        rows.append(
            [
                s["variant"],
                *sizes,
                f"{s['rows_mean']:.0f}",
                results.pm(s, "test_auc"),
                delta,
                f"{s['worse_in_seeds']}/{s['seeds']}" if s["variant"] != "collisionless" else "—",
                results.pm(s, "test_auc_seen_users"),
                results.pm(s, "test_auc_new_users"),
                results.pm(s, "train_auc"),
            ]
        )
    description = (
        f"{results.split_description(doc)} (initializers and hash salts). "
        f"Hashed tables: {', '.join(tables)}."
    )
    return results.document(TITLE, doc, description, header, rows)


def plot(doc: dict[str, Any], path: Path) -> None:
    plt = plots.pyplot()
    names = [s["variant"] for s in doc["summary"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for offset, (metric, label, color) in zip((-0.08, 0.0, 0.08), plots.AUC_SERIES, strict=True):
        x = np.arange(len(names)) + offset
        for i, name in enumerate(names):
            values = [r[metric] for r in doc["runs"] if r["variant"] == name]
            ax.scatter([x[i]] * len(values), values, color=color, alpha=0.35, s=12)
        means = [s[f"{metric}_mean"] for s in doc["summary"]]
        sds = [s[f"{metric}_sd"] for s in doc["summary"]]
        ax.errorbar(x, means, yerr=sds, fmt="o-", color=color, capsize=4, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    plots.finish_axes(ax, TITLE, "best", ylabel="AUC (mean ± sd over seeds)")
    plots.save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    p = cli.eval_parser(NAME, __doc__)
    cli.add_seed_arguments(p, seeds=3, per="variant")
    p.add_argument(
        "--fractions",
        type=dataset.parse_fractions,
        default=list(_FRACTIONS),
        help="hashed table sizes as fractions of the distinct IDs, e.g. 1,1/4,1/10",
    )
    p.add_argument("--hashed-tables", default="user,movie", help="tables whose IDs are hashed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_eval(NAME, argv, parser(), run, markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
