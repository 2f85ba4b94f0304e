"""What users install: the wheel's metadata, and an extension with nothing only tests use."""

import ast
import importlib.metadata
import sys
from pathlib import Path

import arrowbridge
from arrowbridge import _native

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
from pythons import SUPPORTED  # noqa: E402

TEST_HOOKS = ["panic_in_kernel", "rust_numpy_identity", "rust_numpy_sum", "measured_region"]


def test_the_metadata_names_every_supported_python_and_the_platform():
    meta = importlib.metadata.metadata("arrowbridge")
    classifiers = meta.get_all("Classifier")
    assert meta["Requires-Python"] == f">={SUPPORTED[0]}"
    for version in SUPPORTED:
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert meta["License"] == "Apache-2.0" or "Apache" in meta.get("License-Expression", "")
    assert meta.get_all("Project-URL")
    assert meta["Description-Content-Type"].startswith("text/markdown")
    assert meta["Version"] == arrowbridge.__version__


def test_the_shipped_extension_has_no_test_hooks_and_its_stub_lists_what_it_has():
    for name in TEST_HOOKS:
        assert not hasattr(_native, name), name
    stub = Path(_native.__file__).with_name("_native.pyi")
    (listed,) = (
        node.value
        for node in ast.parse(stub.read_text()).body
        if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"
    )
    names = {element.value for element in listed.elts}
    public = {n for n in dir(_native) if not n.startswith("_")} | {"__version__"}
    assert names == public
    assert not names & set(TEST_HOOKS)
