"""The kernel cache is emptied when the kernels' source changed, and only then."""

from __future__ import annotations

from pathlib import Path

from monolith_ps.kernel_cache import STAMP_NAME, kernel_sources_digest, refresh


def _package(root: Path, kernel: str) -> Path:
    package = root / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "callee.py").write_text(f"from numba import njit\n{kernel}\n")
    (package / "caller.py").write_text("from pkg.jit import hot_kernel\n")
    (package / "plain.py").write_text("x = 1\n")
    return package


def _compiled(cache: Path) -> list[Path]:
    files = [cache / "pkg_abc" / "callee.f-1.py311.nbi", cache / "pkg_abc" / "callee.f-1.nbc"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"machine code")
    return files


def test_the_digest_follows_kernel_modules_only(tmp_path):
    package = _package(tmp_path, "def f(x): return x")
    before = kernel_sources_digest([package])
    (package / "plain.py").write_text("x = 2\n")
    assert kernel_sources_digest([package]) == before
    (package / "sub" / "callee.py").write_text("from numba import njit\ndef f(x): return x + 1\n")
    changed = kernel_sources_digest([package])
    assert changed != before
    (package / "caller.py").write_text("from pkg.jit import hot_kernel\n# edited\n")
    assert kernel_sources_digest([package]) != changed


def test_refresh_empties_a_cache_built_from_other_sources(tmp_path):
    cache = tmp_path / "cache"
    files = _compiled(cache)
    (cache / "notes.txt").write_text("kept")
    assert refresh(cache, digest="new") is True
    assert not any(path.exists() for path in files)
    assert (cache / "notes.txt").read_text() == "kept"
    assert (cache / STAMP_NAME).read_text().strip() == "new"
    files = _compiled(cache)
    assert refresh(cache, digest="new") is False  # same sources: the cache stays
    assert all(path.exists() for path in files)


def test_refresh_without_a_cache_directory_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert refresh(None, digest="x") is False
    assert refresh(tmp_path / "fresh", digest="x") is False
    assert (tmp_path / "fresh" / STAMP_NAME).read_text().strip() == "x"
