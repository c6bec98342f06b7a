"""The container image: the Dockerfile passes hadolint, agrees with the chart, and its build
and install steps, run here as the Dockerfile runs them, give a working ``mps``.

No container engine exists on these machines, so the module fixture replays the
Dockerfile: it copies what the build stage COPYs, runs the build stage's RUN (the wheel),
then the runtime stage's RUN (a fresh virtualenv with the wheel and its dependencies),
with the image's paths mapped to a temporary directory. Dependencies come from a local
wheelhouse, filled from the package index on the first run only. Two things differ from
the image, for speed only: pip does not byte-compile (the image does), and the scratch
directory is on tmpfs when the machine has one (tens of thousands of small files).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chart_render import REPO, Rendering

import monolith_ps

DOCKERFILE = REPO / "Dockerfile"
_VENV_IN_IMAGE = "/opt/monolith-ps"
_WHEELS_IN_IMAGE = "/wheels"
_STEP_TIMEOUT = 600


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def read_dockerfile() -> list[Stage]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments); continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            stages.append(Stage(base))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def stage_env(stage: Stage) -> dict[str, str]:
    env = {}
    for rest in stage.all("ENV"):
        for token in shlex.split(rest):
            name, _, value = token.partition("=")
            env[name] = value
    return env


def run_command(stage: Stage) -> str:
    """The stage's single RUN that does pip work, without BuildKit flags."""
    (command,) = [r for r in stage.all("RUN") if "pip " in r]
    return re.sub(r"^(--\S+\s+)+", "", command)


def chart_pod_specs(rendering: Rendering) -> list[dict[str, Any]]:
    return [w["spec"]["template"]["spec"] for w in rendering.workloads()]


# --- the Dockerfile itself ----------------------------------------------------------------


def _hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    return str(path) if path.exists() else "hadolint"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install numpy\nCMD mps\n")
    result = subprocess.run(
        [_hadolint(), str(careless)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3025"):
        assert rule in result.stdout


def test_dockerfile_is_multi_stage_slim_pinned_non_root(renderings: dict[str, Rendering]) -> None:
    stages = read_dockerfile()
    assert len(stages) == 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stage.base), stage.base
    build, runtime = stages
    assert "pip wheel" in run_command(build) and "--no-deps" in run_command(build)
    assert runtime.all("COPY") == []  # sources stay in the build stage; the wheel is mounted
    assert runtime.all("HEALTHCHECK") == []  # the orchestrator probes gRPC health
    assert runtime.all("ENTRYPOINT") == ['["mps"]']
    (user,) = runtime.all("USER")
    uid = int(user.split(":")[0])
    assert uid == 10001
    env = stage_env(runtime)
    for pod in chart_pod_specs(renderings["default"]):
        assert pod["securityContext"]["runAsUser"] == uid
        for container in pod["containers"]:
            chart_env = {e["name"]: e.get("value") for e in container["env"]}
            assert chart_env["NUMBA_CACHE_DIR"] == env["NUMBA_CACHE_DIR"]
    exposed = {int(p) for rest in runtime.all("EXPOSE") for p in rest.split()}
    assert exposed == set(renderings["default"].values["ports"].values())


def test_image_carries_oci_labels_naming_version_license_and_source() -> None:
    _, runtime = read_dockerfile()
    labels = dict(
        token.split("=", 1) for rest in runtime.all("LABEL") for token in shlex.split(rest)
    )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    (version_arg,) = [a for a in runtime.all("ARG") if a.startswith("VERSION=")]
    assert version_arg == f"VERSION={monolith_ps.__version__}"
    for key in ("title", "description", "url", "documentation"):
        assert labels[f"org.opencontainers.image.{key}"]


def test_dockerignore_lets_through_every_path_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    (build, _) = read_dockerfile()
    for rest in build.all("COPY"):
        *sources, _ = rest.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
            assert (REPO / source).exists()


# --- the image, replayed without a container engine ---------------------------------------


def _wheelhouse() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = cache / "monolith-ps" / "image-test-wheelhouse"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Image:
    venv: Path
    home: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=self.home, env=self.env, capture_output=True, text=True, timeout=120
        )


def _scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="monolith-ps-image-", dir=shm))
    return tmp_path_factory.mktemp("image")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    root = _scratch_dir(tmp_path_factory)
    try:
        yield _replay_dockerfile(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _replay_dockerfile(root: Path) -> Image:
    build, runtime = read_dockerfile()
    wheels, venv, src, bin_dir = root / "wheels", root / "venv", root / "src", root / "bin"
    bin_dir.mkdir()
    # `python` in the RUN lines is the image's interpreter: here, the one under this venv.
    (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))

    # Build stage: COPY the sources into WORKDIR, then RUN.
    (workdir,) = build.all("WORKDIR")
    for rest in build.all("COPY"):
        *sources, dest = rest.split()
        target = src / workdir.lstrip("/") / dest
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    symlinks=True,  # as COPY does: a link resolves only if its target is copied
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)

    def localize(command: str) -> str:
        return command.replace(_VENV_IN_IMAGE, str(venv)).replace(_WHEELS_IN_IMAGE, str(wheels))

    wheelhouse = _wheelhouse()
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base_env["PATH"] = f"{bin_dir}{os.pathsep}{base_env.get('PATH', '')}"

    def replay(stage: Stage, command: str, cwd: Path, fill: list[str]) -> None:
        env = base_env | {k: v for k, v in stage_env(stage).items() if k.startswith("PIP_")}
        offline = env | {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(wheelhouse),
            "PIP_COMPILE": "0",
        }
        result = subprocess.run(
            ["sh", "-c", command], cwd=cwd, env=offline, capture_output=True, text=True,
            timeout=_STEP_TIMEOUT,
        )  # fmt: skip
        if result.returncode != 0:  # first run on this machine: fill the wheelhouse, retry
            shutil.rmtree(venv, ignore_errors=True)
            download = [sys.executable, "-m", "pip", "download", "--dest", str(wheelhouse), *fill]
            fetched = subprocess.run(
                download, capture_output=True, text=True, timeout=_STEP_TIMEOUT
            )
            assert fetched.returncode == 0, f"{result.stderr}\n{fetched.stderr}"
            result = subprocess.run(
                ["sh", "-c", command], cwd=cwd, env=offline, capture_output=True, text=True,
                timeout=_STEP_TIMEOUT,
            )  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"

    build_requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"][
        "requires"
    ]
    replay(build, localize(run_command(build)), src / workdir.lstrip("/"), build_requires)
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == 1, built
    constraints = ["--constraint", str(wheels / "constraints.txt")]
    replay(runtime, localize(run_command(runtime)), root, [*constraints, f"{built[0]}[cluster]"])

    env = base_env | {
        "PATH": f"{venv / 'bin'}{os.pathsep}{base_env['PATH']}",
        "NUMBA_CACHE_DIR": str(root / "numba-cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    home = root / "home"
    home.mkdir()
    return Image(venv=venv, home=home, env=env)


@pytest.mark.slow
def test_entry_points_the_chart_runs_work_in_the_image(
    image: Image, renderings: dict[str, Rendering]
) -> None:
    subcommands = {
        container["args"][0]
        for pod in chart_pod_specs(renderings["default"])
        for container in pod["containers"]
    }
    assert subcommands == {"server", "sync-agent"}
    mps = str(image.venv / "bin" / "mps")
    top = image.run(mps, "--help")
    assert top.returncode == 0 and "usage: mps" in top.stdout, top.stderr
    for subcommand in sorted(subcommands):
        result = image.run(mps, subcommand, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: mps {subcommand}" in result.stdout


@pytest.mark.slow
def test_image_holds_the_runtime_dependencies_and_no_dev_tools(image: Image) -> None:
    listed = image.run(str(image.venv / "bin" / "python"), "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["cluster"]
    for requirement in runtime:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in installed, f"runtime dependency {name} missing from the image"
    versions = {
        p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)
    }
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    seeded = {"monolith-ps", "pip", "setuptools"}  # the project, and what venv seeds
    unpinned = {name for name in versions if name not in pins} - seeded
    assert unpinned == set(), "constraints.txt misses these image dependencies"
    assert {name: versions[name] for name in pins} == pins  # installed exactly as pinned
    for requirement in project["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name not in {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in project["dependencies"]}:
            assert name not in installed, f"dev tool {name} is in the image"


@pytest.mark.slow
def test_image_holds_every_module_of_the_packages(image: Image) -> None:
    (site_packages,) = image.venv.glob("lib/python*/site-packages")
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = [pattern.rstrip("*") for pattern in packages["packages"]["find"]["include"]]
    modules = [
        path.relative_to(REPO)
        for root in roots
        for path in (REPO / root).rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    assert len(modules) > 10
    missing = [str(m) for m in modules if not (site_packages / m).is_file()]
    assert missing == []
    # The commented API, the typing marker of each package, the license text.
    packaged_proto = site_packages / "monolith_ps" / "v1" / "ps.proto"
    assert packaged_proto.read_bytes() == (REPO / "proto/monolith_ps/v1/ps.proto").read_bytes()
    assert all((site_packages / root / "py.typed").is_file() for root in roots)
    (license_file,) = site_packages.glob("monolith_ps-*.dist-info/licenses/LICENSE")
    assert license_file.read_bytes() == (REPO / "LICENSE").read_bytes()
    code = "import monolith_ps, monolith_ps.v1.ps_pb2_grpc; print(monolith_ps.__file__)"
    result = image.run(str(image.venv / "bin" / "python"), "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(image.venv)), "imported outside the image venv"
