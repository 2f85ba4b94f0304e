"""The package's docstring examples, run against the installed wheel (not the source tree)."""

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import arrowbridge

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(arrowbridge.__path__, "arrowbridge.")
    # The cluster needs Ray (an extra); its examples run where Ray is installed.
    if not (info.name.startswith("arrowbridge.cluster") and importlib.util.find_spec("ray") is None)
)


def test_the_tests_run_against_the_installed_package():
    installed = Path(arrowbridge.__file__).resolve()
    assert not installed.is_relative_to(ROOT / "python"), installed
    assert "site-packages" in installed.parts, installed


@pytest.mark.parametrize("name", ["arrowbridge", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failures, tried = doctest.testmod(module, optionflags=flags, report=True)
    assert failures == 0, f"{failures} of {tried} examples of {name} failed"
