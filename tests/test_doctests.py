"""The package's docstring examples, run against the installed wheel (not the source tree)."""

import doctest
import importlib
import importlib.util
import pkgutil
import re
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
IMPORT = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", re.M)


def test_the_tests_run_against_the_installed_package():
    installed = Path(arrowbridge.__file__).resolve()
    assert not installed.is_relative_to(ROOT / "python"), installed
    assert "site-packages" in installed.parts, installed


def missing_imports(test: doctest.DocTest) -> set[str]:
    """The top-level modules the examples of `test` import that are not installed (JAX in
    the smoke runs of other Pythons, which install only numpy, pyarrow and pytest)."""
    names = {m for example in test.examples for m in IMPORT.findall(example.source)}
    return {name for name in names if importlib.util.find_spec(name) is None}


@pytest.mark.parametrize("name", ["arrowbridge", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    skipped = []
    for test in doctest.DocTestFinder().find(module, name):
        missing = missing_imports(test)
        if missing:
            skipped.append(f"{test.name} (imports {', '.join(sorted(missing))})")
            continue
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"
    if skipped:
        pytest.skip(f"ran {results.attempted} examples; not installed here: " + "; ".join(skipped))
