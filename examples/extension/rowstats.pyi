"""rowstats: an example extension built on arrowbridge-pyo3.

Every array argument takes NumPy arrays, Arrow producers (pyarrow, polars, duckdb,
nanoarrow, arro3) and DLPack producers (JAX, PyTorch) without copies; a bad one raises an
exception of ``arrowbridge.errors`` with a note naming the parameter (without the arrowbridge
package installed, the built-in exception that class derives from, with the same message).
"""

from typing import Any

import numpy as np

__all__ = [
    "add_into",
    "address",
    "arange",
    "dot",
    "ragged_addresses",
    "ragged_means",
    "raise_error",
    "row_means",
    "row_means_numpy",
    "scale",
    "total",
    "total32",
    "total_numpy",
]

def total(x: Any) -> float:
    """The sum of all elements of a float64 array of any rank."""

def total32(x: Any) -> float:
    """The sum of all elements of a float32 array of any rank."""

def row_means(x: Any) -> np.ndarray:
    """The mean of each row of a 2-D float64 array (a new array, not a copy of Rust's)."""

def ragged_means(x: Any) -> np.ndarray:
    """The mean of each tensor of ragged float64 data (NaN for an empty one)."""

def ragged_addresses(x: Any) -> list[int]:
    """The address of each tensor's first element as Rust sees it."""

def dot(a: Any, b: Any) -> float:
    """The dot product of two float64 vectors of the same length."""

def scale(x: np.ndarray, factor: float) -> None:
    """Scales a writable float64 NumPy array in place."""

def add_into(out: np.ndarray, x: Any) -> None:
    """Adds ``x`` to ``out`` in place; the two may not share memory."""

def address(x: Any) -> int:
    """The address of the first element Rust sees."""

def arange(n: int) -> tuple[np.ndarray, int]:
    """``0 .. n-1`` as float64, and the address Rust allocated them at."""

def raise_error(variant: str) -> None:
    """Raises the exception of the ``arrowbridge::Error`` variant named ``variant``
    (``"Shape"``, ``"OutOfMemory"``, ...): the ``arrowbridge.errors`` class, or without the
    arrowbridge package the built-in class it derives from, with the same message."""

def total_numpy(x: np.ndarray) -> float:
    """``total`` written with rust-numpy's ``PyReadonlyArrayDyn`` (NumPy arrays only)."""

def row_means_numpy(x: np.ndarray) -> np.ndarray:
    """``row_means`` written with rust-numpy's ``PyReadonlyArray2`` and ``IntoPyArray``."""
