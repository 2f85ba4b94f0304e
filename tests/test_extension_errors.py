"""An extension built on arrowbridge-pyo3 (rowstats) raises every `arrowbridge::Error` variant
as its `arrowbridge.errors` class when the arrowbridge package is importable, and as the
built-in class that class derives from, with the same message, when it is not."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import rowstats

import arrowbridge.errors

ERROR_RS = Path(__file__).parent.parent / "crates" / "arrowbridge" / "src" / "error.rs"

# The class of arrowbridge.errors each variant of `arrowbridge::Error` is raised as.
CLASSES = {
    "Nulls": "NullValuesError",
    "Misaligned": "MisalignedBufferError",
    "ByteOrder": "ByteOrderError",
    "UnsupportedType": "UnsupportedTypeError",
    "Device": "UnsupportedDeviceError",
    "ReadOnly": "ReadOnlyError",
    "AlreadyBorrowed": "AlreadyBorrowedError",
    "DType": "DTypeMismatchError",
    "Mismatch": "DTypeMismatchError",
    "Shape": "ShapeError",
    "UnknownKernel": "UnknownKernelError",
    "Param": "KernelParameterError",
    "CopyRequired": "CopyRequiredError",
    "InvalidData": "InvalidArrowDataError",
    "Kernel": "KernelError",
    "Io": "FileError",
    "BadFile": "InvalidFileError",
    "Plugin": "PluginError",
    "OutOfMemory": "OutOfMemoryError",
    "Arrow": "InvalidArrowDataError",
}

# Raises each variant, and a bad argument of each kind, in a process that cannot import
# arrowbridge; prints what was raised.
WITHOUT_ARROWBRIDGE = """
import json, sys
sys.modules["arrowbridge"] = None  # as if it were not installed
import numpy as np
import rowstats

def raised(f, *args):
    try:
        f(*args)
    except Exception as e:
        return [type(e).__module__, type(e).__qualname__, str(e), getattr(e, "__notes__", [])]

results = {v: raised(rowstats.raise_error, v) for v in json.loads(sys.argv[1])}
results["argument dtype"] = raised(rowstats.total, np.arange(3))
results["argument rank"] = raised(rowstats.row_means, np.arange(3.0))
print(json.dumps(results))
"""


def variants() -> list[str]:
    """The variants of `arrowbridge::Error`, read from its source."""
    source = ERROR_RS.read_text()
    body = source[source.index("pub enum Error {") : source.index("\n}\n")]
    return re.findall(r"^    ([A-Z]\w*)\s*[{(]", body, re.MULTILINE)


def builtin_base(cls: type) -> type:
    """The built-in exception class `cls` derives from (the first in its MRO)."""
    return next(c for c in cls.__mro__[1:] if c.__module__ == "builtins")


def raised(f, *args) -> Exception:
    try:
        f(*args)
    except Exception as e:
        return e
    raise AssertionError(f"{f.__name__}{args} raised nothing")


def without_arrowbridge(names: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_ARROWBRIDGE, json.dumps(names)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_the_table_names_every_variant():
    assert sorted(variants()) == sorted(CLASSES)


def test_every_variant_is_its_arrowbridge_class_or_else_the_builtin_with_the_same_message():
    names = variants()
    assert len(names) >= 20
    plain = without_arrowbridge(names)
    for variant in names:
        cls = getattr(arrowbridge.errors, CLASSES[variant])
        with_package = raised(rowstats.raise_error, variant)
        assert type(with_package) is cls, variant
        builtin = builtin_base(cls)
        module, name, message, _ = plain[variant]
        assert (module, name) == ("builtins", builtin.__qualname__), variant
        assert message == str(with_package), variant


def test_bad_arguments_raise_builtins_with_the_same_message_and_note_without_arrowbridge():
    plain = without_arrowbridge([])
    for key, f, arg, cls in [
        ("argument dtype", rowstats.total, np.arange(3), arrowbridge.errors.DTypeMismatchError),
        ("argument rank", rowstats.row_means, np.arange(3.0), arrowbridge.errors.ShapeError),
    ]:
        with_package = raised(f, arg)
        assert type(with_package) is cls
        module, name, message, notes = plain[key]
        assert (module, name) == ("builtins", builtin_base(cls).__qualname__)
        assert message == str(with_package)
        assert notes == with_package.__notes__ == ["while processing 'x'"]


def test_an_unknown_variant_is_a_key_error():
    e = raised(rowstats.raise_error, "NoSuchVariant")
    assert type(e) is KeyError
