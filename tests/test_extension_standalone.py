"""The extension example of arrowbridge-pyo3's README (examples/extension-standalone) builds as a
project of its own: copied outside the repository, with arrowbridge-pyo3 as a path dependency,
built by maturin into a wheel, and imported with and without the arrowbridge package."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "extension-standalone"
MATURIN = Path(sys.executable).parent / "maturin"

USE = """
import sys
if sys.argv[1] == "without":
    sys.modules["arrowbridge"] = None  # as if it were not installed
import numpy as np
import pyarrow as pa
import rownorm

x = np.array([[3.0, 4.0], [0.0, 2.0]])
expected = [[0.6, 0.8], [0.0, 1.0]]
np.testing.assert_allclose(rownorm.normalize_rows(x), expected)
tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(x)
np.testing.assert_allclose(rownorm.normalize_rows(tensor), expected)
rownorm.clip(x, 0.0, 3.0)
assert x.max() == 3.0
try:
    rownorm.normalize_rows(np.zeros((1, 2)))
except ValueError as e:
    print(type(e).__module__, type(e).__qualname__, e, sep="|")
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory with rownorm installed, built from a copy of the example outside the
    repository."""
    tmp = tmp_path_factory.mktemp("standalone")
    crate = tmp / "rownorm"
    shutil.copytree(EXAMPLE, crate)
    manifest = crate / "Cargo.toml"
    pyo3_crate = (ROOT / "crates" / "arrowbridge-pyo3").as_posix()
    text, n = re.subn(
        r'path = "[^"]*arrowbridge-pyo3"', f'path = "{pyo3_crate}"', manifest.read_text()
    )
    assert n == 1
    manifest.write_text(text)
    # The workspace's versions of every dependency (cargo drops the ones it does not use),
    # and its target directory, so that dependencies already built are not built again.
    shutil.copy(ROOT / "Cargo.lock", crate / "Cargo.lock")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    subprocess.run(
        [MATURIN, "build", "--release", "--quiet", "-m", manifest, "-o", tmp / "wheels"],
        cwd=tmp,
        env=env,
        check=True,
    )
    (wheel,) = (tmp / "wheels").glob("rownorm-*.whl")
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def use(site: Path, arrowbridge: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run(
        [sys.executable, "-c", USE, arrowbridge],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("|")


def test_the_standalone_example_builds_outside_the_workspace_and_works_with_arrowbridge(site):
    assert use(site, "with") == ["arrowbridge.errors", "InvalidArrowDataError", "row 0: has norm 0"]


def test_the_standalone_example_works_without_the_arrowbridge_package(site):
    assert use(site, "without") == ["builtins", "ValueError", "row 0: has norm 0"]
