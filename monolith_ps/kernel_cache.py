"""Keeps Numba's on-disk kernel cache in step with the kernels' source.

Numba checks a cached kernel only against the file that defines it: a kernel whose
callee in another module changed would load its old machine code. ``refresh`` keeps a
digest of every kernel module beside the cache and empties the cache when the digest
differs, so an edited or upgraded checkout compiles afresh instead of running stale code.
``mps warmup``, the local launcher and the test suite call it before any kernel runs;
a server does not (servers that share a cache directory would race to empty it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["STAMP_NAME", "kernel_sources_digest", "refresh"]

STAMP_NAME = "kernel-sources.sha256"
_KERNEL_PACKAGES = ("monolith_ps", "ps_client", "ps_server")
_CACHE_SUFFIXES = (".nbi", ".nbc")
_KERNEL_MARKERS = (b"numba", b"hot_kernel")  # what a module that defines kernels names


def _package_dirs() -> list[Path]:
    dirs: list[Path] = []
    for name in _KERNEL_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def kernel_sources_digest(package_dirs: Iterable[Path] | None = None) -> str:
    """SHA-256 over the path and text of every module below ``package_dirs`` (default:
    the installed core, client and server) that imports Numba or compiles a kernel."""
    digest = hashlib.sha256()
    for root in package_dirs if package_dirs is not None else _package_dirs():
        for path in sorted(Path(root).rglob("*.py")):
            text = path.read_bytes()
            if any(marker in text for marker in _KERNEL_MARKERS):
                digest.update(path.relative_to(root).as_posix().encode() + b"\0" + text)
    return digest.hexdigest()


def refresh(cache_dir: str | os.PathLike[str] | None = None, digest: str | None = None) -> bool:
    """Empty ``cache_dir`` (default ``NUMBA_CACHE_DIR``) of compiled kernels when they were
    built from other sources than ``digest`` (default: this install's), then record it.
    True when the cache was emptied; nothing happens without a cache directory."""
    where = cache_dir if cache_dir is not None else os.environ.get("NUMBA_CACHE_DIR")
    if not where:
        return False
    cache = Path(where)
    digest = digest if digest is not None else kernel_sources_digest()
    stamp = cache / STAMP_NAME
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    emptied = False
    if cache.is_dir():
        for path in cache.rglob("*"):
            if path.suffix in _CACHE_SUFFIXES and path.is_file():
                path.unlink(missing_ok=True)
                emptied = True
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    return emptied
