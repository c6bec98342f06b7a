"""Describe a snapshot directory or serving bundle: what each snapshot holds, what verifies.

``inspect_path`` builds a report (the restore chain a server would pick, the status of
every snapshot, orphans); ``render`` prints it for people, ``to_json`` for scripts.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ps_server.snapshot.bundle import is_bundle, read_bundle_manifest, verify_bundle
from ps_server.snapshot.files import CorruptSnapshotError
from ps_server.snapshot.format import Manifest
from ps_server.snapshot.store import SnapshotStore

OK = "ok"


@dataclass
class TableLine:
    name: str
    rows: int
    tombstones: int
    since_version: int
    complete_version: int


@dataclass
class SnapshotLine:
    """One snapshot directory: its manifest in brief and whether it verifies."""

    name: str
    seq: int
    kind: str
    status: str
    in_chain: bool = False
    skipped: bool = False
    parent_seq: int | None = None
    created_unix: float = 0.0
    epoch: str = ""
    shard: str = ""
    bytes: int = 0
    rows: int = 0
    tables: list[TableLine] = field(default_factory=list)
    dense_arrays: int = 0
    dense_version: int | None = None


@dataclass
class InspectReport:
    """A snapshot directory (``kind="snapshots"``) or a bundle (``kind="bundle"``)."""

    path: str
    kind: str
    ok: bool
    summary: str
    snapshots: list[SnapshotLine] = field(default_factory=list)
    chain: list[int] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    bundle: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect_path(path: Path | str, checksums: bool = True) -> InspectReport:
    """Report on ``path``; ``checksums=False`` checks manifests and sizes only."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if is_bundle(path):
        return _inspect_bundle(path, checksums)
    return _inspect_snapshots(path, checksums)


def _line(name: str, manifest: Manifest, status: str) -> SnapshotLine:
    server = manifest.server
    return SnapshotLine(
        name=name,
        seq=manifest.seq,
        kind=manifest.kind,
        status=status,
        parent_seq=manifest.parent_seq,
        created_unix=manifest.created_unix,
        epoch=f"{server.epoch:016x}",
        shard=f"{server.role} {server.shard_index}/{server.num_shards}",
        bytes=manifest.bytes,
        rows=manifest.rows,
        tables=[
            TableLine(n, t.rows, t.tombstones, t.since_version, t.complete_version)
            for n, t in sorted(manifest.tables.items())
        ],
        dense_arrays=len(manifest.dense.files) if manifest.dense else 0,
        dense_version=manifest.dense.version if manifest.dense else None,
    )


def _inspect_snapshots(root: Path, checksums: bool) -> InspectReport:
    store = SnapshotStore(root)
    verified: set[int] = set()

    def check(snap_path: Path, manifest: Manifest) -> None:
        if checksums:
            store.verify(snap_path, manifest)
        else:
            store.check_sizes(snap_path, manifest)
        verified.add(manifest.seq)

    selection = store.select_chain(check)
    chain = [m.seq for m, _ in selection.chain]
    skipped = {s.seq: s.reason for s in selection.skipped}
    lines = []
    for snap, manifest in store.iter_manifests():
        if isinstance(manifest, CorruptSnapshotError):
            lines.append(SnapshotLine(snap.path.name, snap.seq, snap.kind, f"CORRUPT: {manifest}"))
            lines[-1].skipped = snap.seq in skipped
            continue
        status = OK
        if snap.seq not in verified:
            try:
                check(snap.path, manifest)
            except CorruptSnapshotError as exc:
                status = f"CORRUPT: {exc}"
        line = _line(snap.path.name, manifest, status)
        line.in_chain = snap.seq in chain
        line.skipped = snap.seq in skipped
        if line.skipped and status == OK:
            line.status = f"UNUSABLE: {skipped[snap.seq]}"
        lines.append(line)
    orphans = [p.name for p in selection.orphans]
    if not lines:
        ok, summary = False, "no snapshots"
    elif not chain:
        ok, summary = False, "NOT VERIFIED: no full snapshot verifies; a restore would start empty"
    elif skipped:
        ok = False
        summary = (
            f"NOT VERIFIED: restore would stop at seq {chain[-1]} and skip newer "
            f"{', '.join(str(s) for s in sorted(skipped))}"
        )
    else:
        ok, summary = True, f"verified: restore would load seq {', '.join(map(str, chain))}"
    if not checksums and ok:
        summary += " (sizes only, checksums not read)"
    return InspectReport(str(root), "snapshots", ok, summary, lines, chain, orphans)


def _inspect_bundle(path: Path, checksums: bool) -> InspectReport:
    try:
        manifest = verify_bundle(path) if checksums else read_bundle_manifest(path)
    except CorruptSnapshotError as exc:
        return InspectReport(str(path), "bundle", False, f"NOT VERIFIED: {exc}")
    sources = [
        {
            "shard": f"{s['server']['shard_index']}/{s['server']['num_shards']}",
            "epoch": f"{s['server']['epoch']:016x}",
            "seqs": s.get("seqs", []),
            "tables": {
                n: {"rows": t["rows"], "dim": t["dim"], "complete_version": t["complete_version"]}
                for n, t in sorted(s["tables"].items())
            },
            "dense_arrays": len(s["dense"]["files"]) if s.get("dense") else 0,
        }
        for s in manifest.sources
    ]
    info = {
        "dtype": manifest.dtype,
        "created_unix": manifest.created_unix,
        "bytes": sum(f.bytes for f in manifest.files.values()),
        "sources": sources,
    }
    summary = "verified bundle" if checksums else "bundle (sizes only, checksums not read)"
    return InspectReport(str(path), "bundle", True, summary, bundle=info)


# ---------------------------------------------------------------- text


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(unix: float) -> str:
    if not unix:
        return "-"
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(report: InspectReport) -> str:
    """The report as text for a terminal."""
    out = [f"{report.path} ({report.kind})"]
    if report.kind == "bundle":
        info = report.bundle or {}
        if info:
            out.append(
                f"  dtype {info['dtype']}, {_size(info['bytes'])}, {_when(info['created_unix'])}"
            )
            for source in info["sources"]:
                out.append(
                    f"  training shard {source['shard']} epoch {source['epoch']} "
                    f"from seq {source['seqs']}, {source['dense_arrays']} dense arrays"
                )
                for name, t in source["tables"].items():
                    out.append(
                        f"    table {name}: {t['rows']} rows, dim {t['dim']}, "
                        f"complete to version {t['complete_version']}"
                    )
        out.append(report.summary)
        return "\n".join(out)
    out.append(
        f"  {'':1} {'SEQ':>8} {'KIND':4} {'PARENT':>8} {'CREATED (UTC)':19} "
        f"{'EPOCH':16} {'BYTES':>10} {'ROWS':>10}  STATUS"
    )
    for line in report.snapshots:
        mark = "*" if line.in_chain else ("!" if line.skipped else " ")
        parent = "-" if line.parent_seq is None else str(line.parent_seq)
        out.append(
            f"  {mark:1} {line.seq:>8} {line.kind:4} {parent:>8} {_when(line.created_unix):19} "
            f"{line.epoch or '-':16} {_size(line.bytes):>10} {line.rows:>10}  {line.status}"
        )
        if line.shard:
            out.append(f"{'':14}written by {line.shard}")
        for t in line.tables:
            out.append(
                f"{'':14}table {t.name}: {t.rows} rows, {t.tombstones} tombstones, "
                f"versions ({t.since_version}, {t.complete_version}]"
            )
        if line.dense_version is not None:
            out.append(f"{'':14}dense: {line.dense_arrays} arrays, version {line.dense_version}")
    for orphan in report.orphans:
        out.append(f"  orphan (unfinished write or delete, removed by retention): {orphan}")
    out.append("  * = in the chain a restore would load, ! = skipped by restore")
    out.append(report.summary)
    return "\n".join(out)
