"""Serving bundles: the values of a trained model, without optimizer state, to ship and serve.

``write_bundle`` folds each training shard's newest consistent chain into its live rows
and writes keys, values (float32 or float16) and versions per table, the learned default
row, and the dense values, with a checksummed manifest; the directory appears under its
final name only once complete. ``load_serving_sources`` reads either a bundle or a
training snapshot directory, which is how a serving server bootstraps.

Each source keeps its training shard's identity, epoch and ``complete_version``, so a
serving server started from it can report sync cursors and let the agent continue with
deltas instead of a full resync.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ps_server.snapshot.content import ROW_KEYS, ROW_VERSIONS, DenseSnapshot
from ps_server.snapshot.files import (
    CHECKSUM_ALGORITHM,
    CorruptSnapshotError,
    FileEntry,
    UnsupportedFormatError,
    check_file_size,
    expect_files,
    expect_int,
    expect_type,
    fsync_dir,
    publish_files,
    read_json,
    read_npy,
    verify_file,
    write_json,
    write_npy,
)
from ps_server.snapshot.format import MANIFEST_NAME, PARTIAL_SUFFIX, ServerInfo
from ps_server.snapshot.merge import merge_chain
from ps_server.snapshot.store import SnapshotStore
from ps_server.table import Delta

_LOGGER = logging.getLogger(__name__)

BUNDLE_FORMAT = "monolith-ps-serving-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_DTYPES = ("float32", "float16")
ROW_VALUES = "values"
DEFAULT_ROW = "default_row"
DEFAULT_VERSION = "default_version"

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class NoSnapshotError(FileNotFoundError):
    """A directory holds no snapshot (or no bundle) that can be loaded."""


@dataclass(frozen=True)
class ServingTable:
    """One table's rows as a serving server holds them."""

    keys: np.ndarray
    values: np.ndarray
    versions: np.ndarray
    complete_version: int
    default_row: np.ndarray | None = None
    default_version: int = 0

    def as_delta(self) -> Delta:
        """Every row, as an incremental delta to load with ``apply_delta``."""
        return Delta.of_rows(
            self.keys,
            self.values,
            self.versions,
            complete_version=self.complete_version,
            default_value=self.default_row,
            default_version=self.default_version,
        )


@dataclass(frozen=True)
class ServingSource:
    """The state of one training shard, as a serving server loads it."""

    server: ServerInfo
    tables: dict[str, ServingTable]
    dense: DenseSnapshot | None
    seqs: tuple[int, ...]
    created_unix: float = 0.0  # when the newest snapshot of this state was written


@dataclass(frozen=True)
class BundleInfo:
    """What ``write_bundle`` wrote."""

    path: Path
    sources: int
    tables: int
    rows: int
    bytes: int
    clipped_values: int
    seconds: float


# ---------------------------------------------------------------- reading sources


def is_bundle(path: Path | str) -> bool:
    """True when ``path`` is a serving bundle (a manifest at its top level)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def describe_contents(path: Path | str) -> str:
    """What is at ``path``, in a few words, for a message refusing to use it."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a directory"
    names = sorted(entry.name for entry in path.iterdir())
    if not names:
        return f"{path} is an empty directory"
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    return f"{path} holds {shown}"


def not_a_source_message(path: Path | str) -> str:
    """Why ``path`` is neither a training snapshot directory nor a serving bundle."""
    return (
        f"{path} is neither a training snapshot directory nor a serving bundle "
        f"({describe_contents(path)}); give a training server's --snapshot-dir or a "
        "directory written by `mps bundle`"
    )


def missing_shards(sources: Sequence[ServingSource]) -> list[int]:
    """Training shards of the sources' cluster that none of them holds."""
    if not sources:
        return []
    have = {s.server.shard_index for s in sources}
    return [i for i in range(sources[0].server.num_shards) if i not in have]


def sources_from_snapshots(root: Path | str) -> ServingSource:
    """The newest consistent state of one training shard's snapshot directory."""
    store = SnapshotStore(root)
    result = store.restore()
    if result.empty:
        if not result.skipped:
            raise NoSnapshotError(not_a_source_message(root))
        raise NoSnapshotError(
            f"{root}: {len(result.skipped)} snapshot(s) and none verifies "
            f"({result.skipped[-1].path.name}: {result.skipped[-1].reason})"
        )
    if result.lost_updates:
        _LOGGER.warning(
            "%s: using seq %d; skipped newer %s",
            root,
            result.chain[-1].seq,
            ", ".join(s.path.name for s in result.skipped),
        )
    merged = merge_chain(result.chain)
    tables = {}
    for name, section in merged.tables.items():
        if ROW_VALUES not in section.rows:
            raise CorruptSnapshotError(f"{root}: table {name!r} has no {ROW_VALUES!r} rows")
        default = section.arrays.get(DEFAULT_ROW)
        default_version = int(section.meta.get(DEFAULT_VERSION, 0))
        learned = default is not None and default_version > 0
        tables[name] = ServingTable(
            keys=section.rows[ROW_KEYS],
            values=section.rows[ROW_VALUES],
            versions=section.rows[ROW_VERSIONS],
            complete_version=section.complete_version,
            default_row=np.asarray(default, dtype=np.float32) if learned else None,
            default_version=default_version if learned else 0,
        )
    dense = None
    if merged.dense is not None:
        dense = DenseSnapshot(dict(merged.dense.arrays), merged.dense.version)
    created = result.chain[-1].manifest.created_unix
    return ServingSource(merged.server, tables, dense, merged.seqs, created)


def load_serving_sources(paths: Sequence[Path | str]) -> list[ServingSource]:
    """Every training shard found in ``paths``: bundles or training snapshot directories."""
    sources: list[ServingSource] = []
    for path in paths:
        if is_bundle(path):
            sources.extend(read_bundle(path))
        else:
            sources.append(sources_from_snapshots(path))
    _check_distinct_shards(sources)
    return sources


def _check_distinct_shards(sources: Sequence[ServingSource]) -> None:
    counts = {s.server.num_shards for s in sources}
    if len(counts) > 1:
        raise ValueError(f"sources come from clusters of different sizes: {sorted(counts)}")
    seen: set[int] = set()
    for source in sources:
        if source.server.shard_index in seen:
            raise ValueError(f"training shard {source.server.shard_index} given twice")
        seen.add(source.server.shard_index)


# ---------------------------------------------------------------- writing bundles


def write_bundle(
    sources: Sequence[Path | str],
    dest: Path | str,
    dtype: str = "float32",
    allow_partial: bool = False,
) -> BundleInfo:
    """Write a serving bundle of ``sources`` (snapshot dirs or bundles) to ``dest``.

    ``dest`` must not exist; it appears only when complete. With ``float16``, values
    beyond its range are clipped to +-65504 and counted (logged and in the manifest).
    Sources that miss some training shard of their cluster are refused (``ValueError``
    naming the shards) unless ``allow_partial``: a bundle without them lacks their rows.
    """
    started = time.monotonic()
    if dtype not in BUNDLE_DTYPES:
        raise ValueError(f"dtype must be one of {BUNDLE_DTYPES}, got {dtype!r}")
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; a bundle is written to a new directory")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"{dest.parent} does not exist")
    loaded = load_serving_sources(sources)
    missing = missing_shards(loaded)
    if missing:
        held = sorted(s.server.shard_index for s in loaded)
        message = (
            f"the sources hold training shards {held} of {loaded[0].server.num_shards}; "
            f"shards {missing} are missing"
        )
        if not allow_partial:
            raise ValueError(
                f"{message}: give every shard's snapshot directory with --from, or "
                "--allow-partial to bundle only these (the bundle then lacks their rows)"
            )
        _LOGGER.warning("partial bundle: %s", message)
    work = dest.with_name(dest.name + PARTIAL_SUFFIX)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        manifest, clipped = _write_bundle_files(work, loaded, np.dtype(dtype))
        write_json(work / MANIFEST_NAME, manifest)
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    if clipped:
        _LOGGER.warning("%d values beyond float16 range were clipped to +-65504", clipped)
    files = manifest["files"].values()
    return BundleInfo(
        path=dest,
        sources=len(loaded),
        tables=len({t for s in loaded for t in s.tables}),
        rows=sum(len(t.keys) for s in loaded for t in s.tables.values()),
        bytes=sum(f["bytes"] for f in files),
        clipped_values=clipped,
        seconds=time.monotonic() - started,
    )


def _write_bundle_files(
    work: Path, sources: Sequence[ServingSource], dtype: np.dtype
) -> tuple[dict[str, Any], int]:
    files: dict[str, FileEntry] = {}

    def put(rel: str, array: np.ndarray) -> str:
        files[rel] = write_npy(work, rel, array, publish=False)
        return rel

    clipped = 0
    source_entries = []
    for s_index, source in enumerate(sources):
        tables = {}
        for t_index, (name, table) in enumerate(sorted(source.tables.items())):
            prefix = f"s{s_index:03d}.t{t_index:04d}"
            values, n_clipped = _cast_values(table.values, dtype)
            clipped += n_clipped
            table_files = {
                "keys": put(f"{prefix}.keys.npy", table.keys),
                "values": put(f"{prefix}.values.npy", values),
                "versions": put(f"{prefix}.versions.npy", table.versions),
            }
            if table.default_row is not None:
                table_files[DEFAULT_ROW] = put(f"{prefix}.default_row.npy", table.default_row)
            tables[name] = {
                "rows": len(table.keys),
                "dim": int(values.shape[1]) if values.ndim == 2 else 0,
                "complete_version": table.complete_version,
                DEFAULT_VERSION: table.default_version,
                "files": table_files,
            }
        dense = None
        if source.dense is not None:
            dense = {
                "version": source.dense.version,
                "files": {
                    name: put(f"s{s_index:03d}.dense.{i:04d}.npy", array)
                    for i, (name, array) in enumerate(sorted(source.dense.arrays.items()))
                },
            }
        source_entries.append(
            {
                "server": source.server.to_json(),
                "seqs": list(source.seqs),
                "created_unix": source.created_unix,
                "tables": tables,
                "dense": dense,
            }
        )
    publish_files(work, list(files))
    fsync_dir(work)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "checksum": CHECKSUM_ALGORITHM,
        "created_unix": time.time(),
        "dtype": dtype.name,
        "clipped_values": clipped,
        "sources": source_entries,
        "files": {rel: entry.to_json() for rel, entry in files.items()},
    }
    return manifest, clipped


def _cast_values(values: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, int]:
    if dtype == np.float16 and values.size:
        over = np.abs(values) > _FLOAT16_MAX
        n_over = int(np.count_nonzero(over))
        if n_over:
            values = np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX)
        return values.astype(np.float16), n_over
    return values.astype(dtype, copy=False), 0


# ---------------------------------------------------------------- reading bundles


@dataclass(frozen=True)
class BundleManifest:
    """A parsed bundle manifest."""

    dtype: str
    created_unix: float
    sources: list[dict[str, Any]]
    files: dict[str, FileEntry]


def read_bundle_manifest(path: Path | str) -> BundleManifest:
    """Parse a bundle's manifest (``CorruptSnapshotError`` naming what is wrong)."""
    path = Path(path)
    obj = read_json(path / MANIFEST_NAME)
    if obj.get("format") != BUNDLE_FORMAT:
        raise CorruptSnapshotError(f"{path}: not a serving bundle ({obj.get('format')!r})")
    version = expect_int(obj.get("format_version"), "format_version")
    if version != BUNDLE_FORMAT_VERSION or obj.get("checksum") != CHECKSUM_ALGORITHM:
        raise UnsupportedFormatError(f"{path}: bundle format_version {version} is not supported")
    dtype = obj.get("dtype")
    if dtype not in BUNDLE_DTYPES:
        raise CorruptSnapshotError(f"{path}: bundle dtype {dtype!r}")
    files = {
        rel: FileEntry.from_json(entry, f"files.{rel}")
        for rel, entry in expect_type(obj.get("files"), dict, "files").items()
    }
    sources = expect_type(obj.get("sources"), list, "sources")
    for i, source in enumerate(sources):
        where = f"sources[{i}]"
        expect_type(source, dict, where)
        ServerInfo.from_json(source.get("server"), f"{where}.server")
        for name, table in expect_type(source.get("tables"), dict, f"{where}.tables").items():
            expect_type(table, dict, f"{where}.tables.{name}")
            expect_int(table.get("complete_version"), f"{where}.tables.{name}.complete_version")
            refs = expect_files(table.get("files"), f"{where}.tables.{name}.files")
            for need in ("keys", "values", "versions"):
                if need not in refs:
                    raise CorruptSnapshotError(f"{where}.tables.{name}: no {need!r} file")
            _check_listed(refs.values(), files, path)
        if source.get("dense") is not None:
            dense = expect_type(source["dense"], dict, f"{where}.dense")
            expect_int(dense.get("version"), f"{where}.dense.version")
            _check_listed(expect_files(dense.get("files"), f"{where}.dense").values(), files, path)
    created = obj.get("created_unix")
    return BundleManifest(dtype, float(created or 0.0), sources, files)


def _check_listed(refs: Any, files: dict[str, FileEntry], path: Path) -> None:
    for rel in refs:
        if rel not in files or "/" in rel or rel.startswith("."):
            raise CorruptSnapshotError(f"{path}: manifest references unlisted file {rel!r}")


def verify_bundle(path: Path | str) -> BundleManifest:
    """Check every file of a bundle against its manifest (sizes and checksums)."""
    path = Path(path)
    manifest = read_bundle_manifest(path)
    for rel, entry in manifest.files.items():
        verify_file(path / rel, entry)
    return manifest


def read_bundle(path: Path | str) -> list[ServingSource]:
    """Load a bundle, verifying every file as it is read."""
    path = Path(path)
    manifest = read_bundle_manifest(path)
    for rel, entry in manifest.files.items():
        check_file_size(path / rel, entry)

    def get(rel: str) -> np.ndarray:
        return read_npy(path / rel, manifest.files[rel])

    sources = []
    for source in manifest.sources:
        tables = {}
        for name, table in source["tables"].items():
            refs = table["files"]
            tables[name] = ServingTable(
                keys=get(refs["keys"]),
                values=get(refs["values"]),
                versions=get(refs["versions"]),
                complete_version=table["complete_version"],
                default_row=get(refs[DEFAULT_ROW]) if DEFAULT_ROW in refs else None,
                default_version=int(table.get(DEFAULT_VERSION, 0)),
            )
        dense = None
        if source.get("dense") is not None:
            dense = DenseSnapshot(
                {name: get(rel) for name, rel in source["dense"]["files"].items()},
                source["dense"]["version"],
            )
        sources.append(
            ServingSource(
                ServerInfo.from_json(source["server"]),
                tables,
                dense,
                tuple(source.get("seqs", ())),
                float(source.get("created_unix") or manifest.created_unix),
            )
        )
    return sources
