"""The Dockerfile's two stages, run outside Docker (no engine here).

The Dockerfile is parsed and its own RUN steps are executed: the builder's `pip wheel` into a
temporary directory (with this machine's compiler, which the builder stage installs), then the
runtime stage's offline `pip install` into a fresh venv whose PATH holds nothing but Python, so a
step that needed a compiler would fail here as it would in python:3.11-slim (the tests check
that no cc, gcc, g++, c++ or clang can be found on it). Steps that change
the system (apt-get, useradd) are not run; the tests check what they are instead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from horde_scanner.testing.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPILERS = ("cc", "gcc", "g++", "c++", "clang")

pytestmark = pytest.mark.timeout(900)


# --- Dockerfile parsing ---


@dataclass
class Step:
    op: str
    flags: list[str]
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def runs(self) -> list[Step]:
        return [s for s in self.steps if s.op == "RUN"]


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments, also inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=_expand(words[0], global_args), name=name))
        elif op == "ARG":
            key, _, default = rest.partition("=")
            (stages[-1].args if stages else global_args)[key] = default
        else:
            stages[-1].steps.append(Step(op, flags, rest))
    return stages


@pytest.fixture(scope="session")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _mount(flags: list[str]) -> dict[str, str] | None:
    for flag in flags:
        if flag.startswith("--mount="):
            return dict(part.split("=", 1) for part in flag[len("--mount=") :].split(","))
    return None


def _remap(command: str, paths: dict[str, Path]) -> str:
    """Container paths the steps use (the wheel directory) -> directories of this test."""
    for container in sorted(paths, key=len, reverse=True):
        command = re.sub(
            rf"(?<![\w./]){re.escape(container)}(?=[/\s\"']|$)", str(paths[container]), command
        )
    return command


def _is_pip(step: Step) -> bool:
    return step.args.startswith("pip ")


# --- the build, once per session ---


@dataclass
class Built:
    wheels: Path
    venv: Path
    bin: Path  # the only directory on PATH: the venv's python, pip and scripts
    env: dict[str, str]  # the runtime stage's ENV, paths moved under the test's directory
    image_args: dict[str, str]
    install_log: str


def _copy_into(stage_root: Path, workdir: str, step: Step) -> None:
    """COPY SRC... DEST from the build context (the repository), DEST relative to WORKDIR."""
    *sources, dest = shlex.split(step.args)
    target = stage_root / workdir.lstrip("/") / dest
    for source in sources:
        src = ROOT / source
        into = target / src.name if dest.endswith("/") else target
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(src, into, ignore=ignore, dirs_exist_ok=True)
        else:
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into)


def _env_step(args: str, paths: dict[str, Path]) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(_remap(args, paths)))


@pytest.fixture(scope="session")
def built(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("image")
    builder, runtime = stages[0], stages[-1]
    assert shutil.which("g++"), "the builder stage needs g++ (listed in .ci/apt-packages.txt)"

    # Builder: COPY the build context, then each pip step, as the Dockerfile writes it.
    broot = base / "builder"
    workdir = "/"
    paths: dict[str, Path] = {}
    for step in builder.steps:
        if step.op == "WORKDIR":
            workdir = step.args
            (broot / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif step.op == "COPY":
            _copy_into(broot, workdir, step)
        elif step.op == "RUN" and _is_pip(step):
            wheel_dir = re.search(r"--wheel-dir[= ](\S+)", step.args)
            if wheel_dir:
                paths[wheel_dir[1]] = broot / wheel_dir[1].lstrip("/")
            env = {
                **os.environ,
                **builder.args,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            }
            proc = subprocess.run(
                ["/bin/sh", "-c", _remap(step.args, paths)],
                cwd=broot / workdir.lstrip("/"),
                env=env,
                capture_output=True,
                text=True,
                timeout=800,
            )
            assert proc.returncode == 0, f"builder step failed: {step.args}\n{proc.stderr}"
    assert paths, "the builder stage has no `pip wheel --wheel-dir DIR` step"
    wheels = next(iter(paths.values()))

    # Runtime: a fresh venv, PATH with Python only, the stage's pip steps with the builder's
    # directory mounted where the Dockerfile mounts it.
    venv = base / "runtime"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # The venv's own bin (python, pip, the venv's scripts) and nothing else; a symlink to its
    # python elsewhere would run the base interpreter instead (no pyvenv.cfg beside it).
    only_python = venv / "bin"
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=str(only_python)) is None, compiler
    rroot = base / "rootfs"
    rpaths = dict(paths)
    image_env: dict[str, str] = {}
    log = []
    for step in runtime.steps:
        if step.op == "WORKDIR":
            rpaths[step.args] = rroot / step.args.lstrip("/")
            rpaths[step.args].mkdir(parents=True, exist_ok=True)
        elif step.op == "ENV":
            image_env.update(_env_step(step.args, rpaths))
        elif step.op == "RUN" and _is_pip(step):
            mount = _mount(step.flags)
            if mount is not None:
                assert mount.get("from") == builder.name, mount
                rpaths[mount["target"]] = broot / mount["source"].lstrip("/")
            env = {
                **runtime.args,
                "PATH": str(only_python),
                "HOME": str(base / "home"),
                "PIP_CONFIG_FILE": os.devnull,  # none of this machine's indexes or find-links
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            }
            proc = subprocess.run(
                ["/bin/sh", "-c", _remap(step.args, rpaths)],
                cwd=base,
                env=env,
                capture_output=True,
                text=True,
                timeout=800,
            )
            assert proc.returncode == 0, f"runtime step failed: {step.args}\n{proc.stderr}"
            log.append(proc.stdout + proc.stderr)
    assert log, "the runtime stage has no pip step"
    return Built(wheels, venv, only_python, image_env, dict(runtime.args), "\n".join(log))


def _run_in_image(built: Built, *argv: str, **kw) -> subprocess.CompletedProcess:
    env = {**built.env, "PATH": str(built.bin), "HOME": str(built.venv)}
    return subprocess.run(
        argv, env={**env, **kw.pop("env", {})}, capture_output=True, text=True, timeout=120, **kw
    )


# --- the tests ---


def test_stages_compiler_only_in_the_builder(stages: list[Stage]):
    assert len(stages) == 2
    builder, runtime = stages
    assert builder.name and runtime.base == builder.base == "python:3.11-slim"
    system = [s.args for s in builder.runs() if not _is_pip(s)]
    assert any("apt-get install" in cmd and "g++" in cmd for cmd in system)
    # The runtime stage installs no system package (so no compiler), only the wheels.
    for step in runtime.runs():
        assert not re.search(r"apt-get|apk |dnf |yum ", step.args), step.args
    pip_steps = [s for s in runtime.runs() if _is_pip(s)]
    assert pip_steps and all(
        "--no-index" in s.args and "--find-links" in s.args and "--only-binary=:all:" in s.args
        for s in pip_steps
    )
    # Wherever torch could come in (extra gpu), the pin applies.
    for step in [s for s in builder.runs() if _is_pip(s)] + pip_steps:
        assert "-c " in step.args and "constraints.txt" in step.args, step.args
    assert builder.args["EXTRAS"] == runtime.args["EXTRAS"]


def test_runs_as_a_non_root_user(stages: list[Stage]):
    users = [s.args for s in stages[-1].steps if s.op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_the_builder_makes_a_wheel_of_everything(built: Built):
    files = sorted(p.name for p in built.wheels.iterdir())
    assert any(re.match(r"horde_scanner-.*\.whl$", f) for f in files)
    pdq = [f for f in files if f.startswith("pdqhash-")]
    assert len(pdq) == 1 and pdq[0].endswith(".whl") and "cp311" in pdq[0], pdq
    assert not [f for f in files if f.endswith((".tar.gz", ".zip"))]  # no sdist left to build
    assert not [f for f in files if f.lower().startswith(("torch-", "nvidia"))]


def test_the_wheels_install_offline_without_a_compiler(built: Built):
    assert "Successfully installed" in built.install_log
    extras = built.image_args["EXTRAS"].split(",")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    wanted = ["pdqhash"] + [
        re.match(r"[A-Za-z0-9._-]+", req)[0]  # type: ignore[index]
        for extra in extras
        for req in optional[extra]
    ]
    script = (
        "import importlib.metadata as m, importlib.util as u, sys, numpy, pdqhash, horde_scanner\n"
        "h, q = pdqhash.compute(numpy.zeros((64, 64, 3), dtype=numpy.uint8))\n"
        "assert len(h) == 256\n"
        "for name in sys.argv[1:]: m.version(name)\n"
        "assert u.find_spec('torch') is None, 'torch came into the image'\n"
        "print('ok', horde_scanner.__version__)\n"
    )
    proc = _run_in_image(built, "python", "-c", script, *wanted)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")
    check = _run_in_image(built, "python", "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_horde_scanner_help_runs_in_the_image(built: Built):
    proc = _run_in_image(built, str(built.venv / "bin" / "horde-scanner"), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "scan" in proc.stdout


def test_the_compose_healthcheck_works_with_the_images_python(built: Built, tmp_path: Path):
    override = yaml.safe_load((ROOT / "docker-compose.horde-scanner.yml").read_text())
    test = override["services"]["horde-scanner"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    port = free_port()
    probe = [arg.replace("127.0.0.1:14051", f"127.0.0.1:{port}") for arg in test[1:]]
    assert probe != test[1:], "the healthcheck should call 127.0.0.1:14051"
    env = {
        **built.env,
        "PATH": str(built.bin),
        "HORDE_SCANNER_SERVER__HOST": "127.0.0.1",  # loopback, not the image's 0.0.0.0
        "HORDE_SCANNER_SERVER__PORT": str(port),
        "HORDE_SCANNER_HORDE__URL": f"http://127.0.0.1:{free_port()}/api",
    }
    assert env["HORDE_SCANNER_STORE__PATH"].startswith(str(built.venv.parent))
    service = subprocess.Popen(
        [str(built.venv / "bin" / "horde-scanner"), "serve"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_port(port, timeout=60)
        except RuntimeError:
            service.kill()
            raise AssertionError(service.communicate()[1]) from None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
            assert resp.status == 200
        healthy = _run_in_image(built, *probe)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        service.terminate()
        service.wait(timeout=30)
        if service.stderr:
            service.stderr.close()
    unhealthy = _run_in_image(built, *probe)
    assert unhealthy.returncode != 0
