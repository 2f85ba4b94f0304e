"""The shipped wheel on every other supported CPython: build, install, run the smoke tests.

For each CPython 3.10-3.13 found (packaging/pythons.py) other than the one running this
script, builds the wheel with the release profile users get, installs it into a fresh
virtualenv with numpy, pyarrow and pytest from PyPI (packaging/requirements-smoke.txt), and
runs there the package's doctests and the tests of `SMOKE`: conversion both ways, kernels,
IPC files and a Flight server and client. A version not found is reported and skipped; any
failure fails the run. CI runs it after ``make test`` (``make wheel-smoke``, .ci/run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from pythons import SUPPORTED, find

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "smoke"
SMOKE = [
    "tests/test_doctests.py",
    "tests/test_to_arrow.py",
    "tests/test_to_numpy.py",
    "tests/test_roundtrip.py",
    "tests/test_call.py",
    "tests/test_ipc.py",
    "tests/test_flight.py",
]
# Tests of the suite that need what only `make build` installs besides the wheel.
DESELECT = [
    "tests/test_call.py::TestErrors::test_a_panic_in_a_kernel_is_a_python_exception",
]


def run(*args: object, **kwargs) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kwargs)


def smoke(python: str, version: str) -> None:
    wheels = WORK / f"wheels-{version}"
    venv = WORK / f"venv-{version}"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    maturin = Path(sys.executable).with_name("maturin")
    run(maturin, "build", "--release", "--locked", "--quiet", "-i", python, "-o", wheels, cwd=ROOT)
    (wheel,) = wheels.glob("*.whl")
    run(python, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run(*pip, "-r", ROOT / "packaging" / "requirements-smoke.txt", wheel)
    deselect = [arg for test in DESELECT for arg in ("--deselect", test)]
    run(
        venv / "bin" / "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *SMOKE,
        *deselect,
        cwd=ROOT,
    )


def main() -> None:
    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for version in SUPPORTED:
        if version == this:
            continue
        python = find(version)
        if python is None:
            print(f"CPython {version}: not found on PATH or under pyenv; skipped", flush=True)
            continue
        start = time.monotonic()
        smoke(python, version)
        print(
            f"CPython {version}: wheel built, installed and smoke-tested "
            f"in {time.monotonic() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
