"""Typed interface of the compiled extension (crates/arrowbridge-py)."""

from typing import Any, final

import numpy as np

__all__ = [
    "ArrowMemory",
    "__version__",
    "call",
    "data_address",
    "export_array",
    "kernels",
    "panic_in_kernel",
    "rust_numpy_identity",
    "to_numpy",
]

__version__: str

def call(kernel: str, /, *arrays: Any, **params: Any) -> Any:
    """Runs a registered Rust kernel; returns one ndarray or a tuple of them."""

def kernels() -> dict[str, str]:
    """Registered kernels: name -> signature."""

def export_array(
    array: np.ndarray,
    *,
    dim_names: list[str] | None = None,
    copy: bool | None = None,
    whole: bool = False,
    name: str = "",
) -> tuple[object, object]:
    """The (schema, array) PyCapsules of an Arrow array viewing `array`."""

def to_numpy(obj: Any, *, copy: bool | None = None) -> np.ndarray: ...
def data_address(array: np.ndarray) -> int:
    """Address of the first element of an ndarray."""

def rust_numpy_identity(x: np.ndarray) -> np.ndarray:
    """The direct rust-numpy path, for benchmarks."""

def panic_in_kernel(message: str) -> None:
    """Runs a panicking kernel through the panic barrier (for tests)."""

@final
class ArrowMemory:
    """The Arrow buffer behind a NumPy array made by arrowbridge (its ``base``)."""

    @property
    def nbytes(self) -> int: ...
    @property
    def address(self) -> int: ...
