"""The import graph: layers point down, no cycles, and a config parses without Numba;
no module is over 500 lines.

Layers: the core (``monolith_ps``) imports no component; ``ps_client`` and ``ps_server``
stand on the core only; ``sync_agent`` on the core and the client; within the server,
the kernels (``optim``) <- the table engine (``table``) <- everything else. The CLI and the
local launcher are entry points on top. Every import counts, including function-local and
type-checking ones.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("monolith_ps", "ps_client", "ps_server", "sync_agent")
ENTRY_POINTS = (
    "monolith_ps.cli",
    "monolith_ps.local",
    "monolith_ps.local_cli",
    "monolith_ps.check_cli",
    "monolith_ps.check",
    "monolith_ps.processes",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = _module_name(path)
            if not name.startswith("monolith_ps.v1"):
                found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every first-party module ``name`` imports (a ``from package import module`` counts
    as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    if module in ENTRY_POINTS or any(module.startswith(e + ".") for e in ENTRY_POINTS):
        return "entry"
    top = module.split(".")[0]
    if top == "monolith_ps":
        return "core"
    if top == "ps_server":
        second = module.split(".")[1] if "." in module else ""
        return {"optim": "server.kernels", "table": "server.table"}.get(second, "server")
    return top


# What each layer may import, besides itself.
ALLOWED = {
    "core": {"core"},
    "ps_client": {"core", "ps_client"},
    "sync_agent": {"core", "ps_client", "sync_agent"},
    "server.kernels": {"core", "server.kernels"},
    "server.table": {"core", "server.kernels", "server.table"},
    "server": {"core", "server.kernels", "server.table", "server"},
    "entry": {"core", "ps_client", "server.kernels", "server.table", "server", "sync_agent",
              "entry"},
}  # fmt: skip


def test_every_import_points_down_or_within_its_layer():
    wrong = sorted(
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(target) not in ALLOWED[_layer(module)]
    )
    assert wrong == []


def test_the_import_graph_has_no_cycles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [module, target]))
            elif target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_the_rules_see_real_edges():
    """The checker itself reads imports: the agent uses the core transport, the table the
    core config."""
    assert "monolith_ps.transport.cluster" in GRAPH["sync_agent.cluster_reader"]
    assert "monolith_ps.table_config" in GRAPH["ps_server.table.embedding_table"]
    assert _layer("ps_server.server") == "server" and _layer("ps_server.optim.optimizers") == (
        "server.kernels"
    )


def _packages_loaded_by(code: str, packages: set[str]) -> list[str]:
    """Which of ``packages`` a fresh interpreter has imported after running ``code``."""
    probe = code + "import sys\nprint(*sorted({m.split('.')[0] for m in sys.modules}))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return sorted(set(out.stdout.split()) & packages)


@pytest.mark.parametrize("module", ["monolith_ps.config", "sync_agent.settings"])
def test_parsing_a_config_imports_no_numba_and_no_server(module):
    code = (
        f"import {module}\n"
        "from monolith_ps.config import parse_config\n"
        "parse_config({'tables': [{'name': 't', 'dim': 4}],"
        " 'dense': [{'name': 'd', 'size': 2, 'optimizer': 'adam'}]})\n"
    )
    assert _packages_loaded_by(code, {"numba", "ps_server"}) == []


def test_building_the_mps_parser_imports_no_component_runtime():
    """``mps --help`` and every subcommand's flags load neither Numba nor a component's
    runtime: subcommands import their runner only when run."""
    code = "from monolith_ps.cli import build_parser\nbuild_parser()\n"
    assert _packages_loaded_by(code, {"numba", "ps_client", "grpc"}) == []


def test_no_module_outside_generated_code_and_tests_is_over_500_lines() -> None:
    """Each module keeps to one job; past 500 lines it is doing several."""
    sources = [
        path
        for top in ("monolith_ps", "ps_client", "ps_server", "sync_agent", "examples", "evals",
                    "benchmarks")
        for path in (ROOT / top).rglob("*.py")
        if "v1" not in path.relative_to(ROOT).parts
    ]  # fmt: skip
    assert len(sources) > 100
    long = {
        str(path.relative_to(ROOT)): n
        for path in sources
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


_PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "shelve", "dill", "cloudpickle", "joblib"}


def _pickle_uses(tree: ast.AST) -> list[str]:
    """Imports of a pickling module, and calls passing ``allow_pickle`` anything but
    False, in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call):
            names = []
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg == "allow_pickle" and not (
                    isinstance(value, ast.Constant) and value.value is False
                ):
                    found.append(f"line {node.lineno}: allow_pickle={ast.unparse(value)}")
        else:
            continue
        found += [
            f"line {node.lineno}: imports {name}"
            for name in names
            if name.split(".")[0] in _PICKLING_MODULES
        ]
    return found


def test_pickle_is_used_nowhere() -> None:
    """Nothing that crosses a process or reaches disk is pickled: no module of the project
    imports a pickling module or loads arrays with ``allow_pickle`` other than False."""
    sources = [
        path
        for top in (*PACKAGES, "examples", "evals", "benchmarks", "tests")
        for path in (ROOT / top).rglob("*.py")
        if "v1" not in path.relative_to(ROOT).parts
    ]
    uses = {
        str(path.relative_to(ROOT)): found
        for path in sources
        if (found := _pickle_uses(ast.parse(path.read_text(), str(path))))
    }
    assert uses == {}


def test_the_pickle_check_finds_each_kind_of_use() -> None:
    tree = ast.parse(
        "import cloudpickle\nfrom shelve import open\nnp.load(f, allow_pickle=1)\n"
        "np.load(f, allow_pickle=flag)\nnp.load(f, allow_pickle=False)\n"
    )
    assert _pickle_uses(tree) == [
        "line 1: imports cloudpickle",
        "line 2: imports shelve",
        "line 3: allow_pickle=1",
        "line 4: allow_pickle=flag",
    ]
