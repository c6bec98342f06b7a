"""``make demo``: real-time training on MovieLens through a local monolith-ps cluster.

Starts 2 training shards, 2 serving shards and the sync agent on this machine, replays
the ratings of a MovieLens release (``--data``; ml-latest-small by default) in timestamp
order, trains the factorization machine online
through the training PS and, after every window, scores the next window through the
serving PS once the agent has synced it. Prints a table and writes ``results/demo.json``,
``results/demo.md`` and ``results/demo_auc.png``.

    python -m examples.movielens.demo [--data FOLDER] [--windows 20] [--limit N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from examples.movielens.data import describe_dataset, load_dataset
from examples.movielens.metrics import roc_auc
from examples.movielens.releases import DATA_ENV_VAR, DatasetNotFoundError
from examples.movielens.report import format_table, plot
from examples.movielens.stream import (
    DEFAULT_CONFIG,
    OnlineLoop,
    ServingScorer,
    SyncWaiter,
    WindowReport,
    build_model,
)
from monolith_ps.config import load_config
from monolith_ps.local import LocalCluster
from ps_client import PSClient

_LOGGER = logging.getLogger(__name__)


def summarize(loop: OnlineLoop, reports: Sequence[WindowReport]) -> dict[str, Any]:
    """Whole-run numbers: AUC over every scored (or trained) event, sync lag, throughput."""
    serve_labels, serve_preds = loop.scored_labels_and_predictions()
    train_labels, train_preds = loop.trained_labels_and_predictions()
    sync = [r.sync_seconds for r in reports]
    return {
        "windows": len(reports),
        "train_events": int(sum(r.train_events for r in reports)),
        "serve_events": int(sum(r.serve_events for r in reports)),
        "serving_auc_all": roc_auc(serve_labels, serve_preds),
        "train_auc_all": roc_auc(train_labels, train_preds),
        "serving_auc_mean": float(np.nanmean([r.serving_auc for r in reports])),
        "train_auc_mean": float(np.nanmean([r.train_auc for r in reports])),
        "serving_found_mean": float(np.mean([r.serving_found for r in reports])),
        "sync_seconds_mean": float(np.mean(sync)),
        "sync_seconds_max": float(np.max(sync)),
        "train_examples_per_second": float(
            sum(r.train_events for r in reports) / max(sum(r.train_seconds for r in reports), 1e-9)
        ),
    }


def serving_keys_looked_up(metrics_urls: dict[str, str]) -> int:
    """Keys the serving servers say they looked up (``monolith_ps_rows_looked_up_total``)."""
    total = 0
    for name, url in metrics_urls.items():
        if not name.startswith("serving-"):
            continue
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "monolith_ps_rows_looked_up":
                total += int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return total


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.movielens.demo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="cluster config (tables.yaml)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"folder of a MovieLens release, any layout GroupLens ships (default: "
        f"${DATA_ENV_VAR}, else ml-latest-small in data/ or ../shared/data)",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N ratings")
    p.add_argument("--windows", type=int, default=20, help="stream windows (default 20)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sparse-interval", default="1s", help="agent's sparse sync interval")
    p.add_argument("--dense-interval", default="1s", help="agent's dense sync interval")
    p.add_argument("--prefetch", action="store_true", help="look up the next batch during compute")
    p.add_argument("--results", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--log-dir", type=Path, default=None, help="cluster logs (default: a temp dir)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Start the cluster, stream, score, write the results; returns the JSON document."""
    events, dataset = load_dataset(args.data, limit=args.limit)
    windows = events.windows(args.windows)
    config = load_config(args.config)
    model = build_model(config)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"{dataset.describe()} {args.windows} windows of ~{len(windows[0])} ratings.")
    started = time.monotonic()
    with LocalCluster(
        args.config,
        training_shards=2,
        serving_shards=2,
        serving_replicas=1,
        sparse_interval=args.sparse_interval,
        dense_interval=args.dense_interval,
        log_dir=args.log_dir,
    ) as cluster:
        say(
            f"cluster up in {time.monotonic() - started:.1f}s: "
            f"training {cluster.training_addresses}, serving {cluster.serving_addresses}"
        )
        serving_addresses = [replicas[0] for replicas in cluster.serving_addresses]
        with (
            PSClient(cluster.training_addresses, role="training") as training,
            PSClient(serving_addresses, role="serving") as serving,
        ):
            waiter = SyncWaiter(
                training, serving_addresses, model.tables, bool(model.dense_sizes())
            )

            def rows() -> tuple[int, int]:
                def total(client: PSClient) -> int:
                    return sum(t.num_rows for s in client.describe() for t in s.tables.values())

                return total(training), total(serving)

            loop = OnlineLoop(
                training,
                model,
                ServingScorer(serving, model),
                sync=waiter.wait,
                rows=rows,
                batch_size=args.batch_size,
                prefetch=args.prefetch,
                progress=not args.quiet,
            )
            try:
                reports = loop.run(windows)
            finally:
                waiter.close()
            serving_lookups = {
                "keys_asked_by_scorer": loop.scorer.keys_asked,
                "keys_looked_up_by_serving": serving_keys_looked_up(cluster.metrics_urls),
            }
    elapsed = time.monotonic() - started
    doc = {
        "command": "python -m examples.movielens.demo " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "dataset": dataset.as_dict(),
        "events": len(events),
        "cluster": {
            "training_shards": 2,
            "serving_shards": 2,
            "sparse_interval": args.sparse_interval,
            "dense_interval": args.dense_interval,
        },
        "model": {
            "factor_dim": model.factor_dim,
            "hidden": model.hidden,
            "fields": [f.name for f in model.fields],
        },
        "interrupted": loop.interrupted,
        "serving_lookups": serving_lookups,
        "seconds": elapsed,
        "summary": summarize(loop, reports) if reports else {},
        "windows": [r.as_dict() for r in reports],
    }
    return doc, reports


def _machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.system()} {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}"
    )


def write_results(
    doc: dict[str, Any], reports: Sequence[WindowReport], out: Path, with_plot: bool
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(doc, indent=2) + "\n")
    s = doc["summary"]
    md = [
        "# MovieLens real-time demo",
        "",
        f"`{doc['command']}` on {doc['date']} ({doc['machine']}), {doc['seconds']:.0f} s.",
        "",
        describe_dataset(doc["dataset"]),
        "",
        format_table(reports, markdown=True),
        "",
        f"Serving AUC over all {s['serve_events']} scored events: **{s['serving_auc_all']:.4f}**; "
        f"training (progressive) AUC: {s['train_auc_all']:.4f}. Mean sync lag "
        f"{s['sync_seconds_mean']:.2f} s (max {s['sync_seconds_max']:.2f} s).",
        "",
    ]
    (out / "demo.md").write_text("\n".join(md))
    if with_plot:
        title = f"{doc['dataset']['name']}: AUC per window (monolith-ps)"
        plot(reports, out / "demo_auc.png", title)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        doc, reports = run_demo(args)
    except DatasetNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the cluster has been shut down", file=sys.stderr)
        return 130
    if not reports:
        print("interrupted before the first window finished; nothing to report", file=sys.stderr)
        return 130
    print(format_table(reports))
    s = doc["summary"]
    print(
        f"\nserving AUC over all {s['serve_events']} scored events: {s['serving_auc_all']:.4f} "
        f"(training, progressive: {s['train_auc_all']:.4f}); mean sync lag "
        f"{s['sync_seconds_mean']:.2f} s; {doc['seconds']:.0f} s in all"
    )
    write_results(doc, reports, args.results, with_plot=not args.no_plot)
    print(f"wrote {args.results}/demo.json, demo.md" + ("" if args.no_plot else ", demo_auc.png"))
    return 130 if doc["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
