"""`make serve` on a machine without a C++ compiler: it says so up front, only when it matters.

pdqhash has no wheel on PyPI for most machines. The check (.ci/build-deps, run by the Makefile
before pip) is driven here with pip kept offline (PIP_NO_INDEX, an empty cache), so "no wheel
available" is a fact of the test and not of the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "build-deps"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++")

pytestmark = pytest.mark.timeout(300)


def _bin(tmp_path: Path, *programs: str) -> Path:
    """A PATH directory holding only the named programs."""
    path = tmp_path / "bin"
    path.mkdir(exist_ok=True)
    for program in programs:
        found = shutil.which(program)
        assert found, f"{program} is needed by this test"
        (path / program).symlink_to(found)
    return path


def _offline(tmp_path: Path, path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": str(path),
        "HOME": str(tmp_path / "home"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_CACHE_DIR": str(tmp_path / "pip-cache"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **extra,
    }


@pytest.fixture
def bare_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


def test_make_serve_without_a_compiler_says_what_to_install(tmp_path: Path):
    path = _bin(tmp_path, "make")
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=str(path)) is None
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "serve", f"VENV={venv}", f"PYTHON={BASE_PYTHON}"],
        env=_offline(tmp_path, path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "pdqhash has no wheel for this machine" in out
    assert "a C++ compiler" in out
    assert "apt-get install -y g++ python3-dev" in out  # this machine is Debian
    # It stopped before pip tried (and failed) to build anything.
    assert "Building wheel" not in out and "Traceback" not in out
    assert not (venv / ".installed").exists()


def test_no_check_when_pdqhash_is_installed(tmp_path: Path):
    # This suite's venv has pdqhash; no compiler, no index: nothing to say.
    proc = subprocess.run(
        [sys.executable, str(CHECK)],
        env=_offline(tmp_path, _bin(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == ""


def test_no_compiler_needed_when_a_wheel_is_available(tmp_path: Path, bare_venv: Path):
    wheels = tmp_path / "wheels"
    # A pdqhash wheel, built here (this machine has the compiler) the way a wheelhouse would be.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "pdqhash"],
        check=True,
        timeout=240,
        capture_output=True,
    )
    proc = subprocess.run(
        [str(bare_venv / "bin" / "python"), str(CHECK)],
        env=_offline(tmp_path, _bin(tmp_path), PIP_FIND_LINKS=str(wheels)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_a_compiler_on_path_is_enough(tmp_path: Path, bare_venv: Path):
    proc = subprocess.run(
        [str(bare_venv / "bin" / "python"), str(CHECK)],
        env=_offline(tmp_path, _bin(tmp_path, "g++")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
