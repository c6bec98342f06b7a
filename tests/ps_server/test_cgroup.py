"""The container memory limit is read from cgroup v2 and v1 layouts; none means absent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ps_server.cgroup import MemoryLimitCollector, memory_limit_bytes


def _layout(tmp_path, proc_lines, files):
    for relative, text in files.items():
        path = tmp_path / "cg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    return tmp_path / "cg", proc


def test_v2_limit_of_the_process_cgroup(tmp_path):
    root, proc = _layout(tmp_path, ["0::/kubepods/pod1"], {"kubepods/pod1/memory.max": "4096\n"})
    assert memory_limit_bytes(root, proc) == 4096


def test_v2_namespaced_root_and_max_means_none(tmp_path):
    root, proc = _layout(tmp_path, ["0::/"], {"memory.max": "8192\n"})
    assert memory_limit_bytes(root, proc) == 8192
    root, proc = _layout(tmp_path, ["0::/"], {"memory.max": "max\n"})
    assert memory_limit_bytes(root, proc) is None


def test_v1_limit_and_its_unlimited_value(tmp_path):
    lines = ["4:memory:/docker/abc", "1:cpu,cpuacct:/docker/abc", "0::/"]
    root, proc = _layout(tmp_path, lines, {"memory/docker/abc/memory.limit_in_bytes": "1048576"})
    assert memory_limit_bytes(root, proc) == 1048576
    unlimited = {"memory/docker/abc/memory.limit_in_bytes": "9223372036854771712"}
    root, proc = _layout(tmp_path, lines, unlimited)
    assert memory_limit_bytes(root, proc) is None


def test_no_cgroup_files_means_none(tmp_path):
    assert memory_limit_bytes(tmp_path / "absent", tmp_path / "absent-proc") is None


def test_collector_exports_the_family_and_a_sample_only_with_a_limit(tmp_path):
    root, proc = _layout(tmp_path, ["0::/"], {"memory.max": "max\n"})
    registry = CollectorRegistry()
    registry.register(MemoryLimitCollector(root, proc))
    assert registry.get_sample_value("monolith_ps_memory_limit_bytes") is None
    assert [f.name for f in registry.collect()] == ["monolith_ps_memory_limit_bytes"]
    (root / "memory.max").write_text("65536\n")
    assert registry.get_sample_value("monolith_ps_memory_limit_bytes") == 65536
