"""arrowbridge: zero-copy exchange of NumPy arrays with Rust ``ndarray`` through Apache Arrow.

>>> import numpy as np, arrowbridge
>>> x = np.arange(12, dtype=np.float32).reshape(3, 4)
>>> t = arrowbridge.to_arrow(x)
>>> t.type
FixedShapeTensorType(extension<arrow.fixed_shape_tensor[value_type=float, shape=[4]]>)
>>> np.shares_memory(arrowbridge.to_numpy(t), x)
True
>>> arrowbridge.call("normalize", np.array([[3.0, 4.0]]))
array([[0.6, 0.8]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from . import _extension, _native, shm
from ._native import call, kernels, load_kernels
from .errors import (
    AlreadyBorrowedError,
    ArrowBridgeError,
    AuthenticationError,
    ByteOrderError,
    CopyRequiredError,
    DTypeMismatchError,
    FileError,
    FlightCallError,
    FlightTimeoutError,
    InvalidArrowDataError,
    InvalidFileError,
    InvalidLocationError,
    InvalidNameError,
    ItemReplacedError,
    KernelError,
    KernelParameterError,
    MisalignedBufferError,
    NotDistributableError,
    NullValuesError,
    OutOfMemoryError,
    PluginError,
    ReadOnlyError,
    RemoteInvalidError,
    RemoteNotFoundError,
    RemoteOutOfMemoryError,
    RemoteStorageError,
    ServerStartError,
    ServerUnavailableError,
    ShapeError,
    TLSConfigError,
    UnknownKernelError,
    UnsupportedDeviceError,
    UnsupportedTypeError,
)
from .flight import Client, ItemStream, Server, connect, serve
from .ipc import IpcReader, iter_ipc, open_ipc, read_ipc, write_ipc

__version__: str = _native.__version__

_extension.register()


def to_arrow(
    x: Any,
    *,
    dim_names: Sequence[str] | None = None,
    copy: bool | None = None,
    whole: bool = False,
) -> pa.Array:
    """Wraps a NumPy array as a pyarrow array over the same memory.

    A 1-D array becomes a primitive array (``bool`` an ``arrow.bool8`` array); an N-D array a
    ``pyarrow.FixedShapeTensorArray`` (the canonical ``arrow.fixed_shape_tensor``) whose rows
    are the array's axis 0. Complex arrays use ``arrowbridge.complex_tensor``.

    Zero-copy whenever the array is one contiguous block with axis 0 outermost: C order, and
    arrays whose inner axes are transposed (described by the tensor's ``permutation``).
    Other layouts (Fortran order, ``x[::2]``, misaligned data) are copied, or raise
    :class:`CopyRequiredError` when ``copy=False``. ``copy=True`` always copies.

    With ``whole=True`` the result has one element holding the whole array (shape and
    ``permutation`` in the type): zero-copy for a contiguous block in any axis order,
    Fortran order included. ``to_numpy(result)[0]`` gives the array back.

    ``x`` may also be a DLPack producer (a JAX or PyTorch array): it is wrapped in place
    like the NumPy array it views.

    ``dim_names`` name the element axes (axes 1.. or, with ``whole=True``, all axes).

    The result keeps ``x`` alive; writing to ``x`` afterwards changes what it holds.

    >>> import numpy as np, arrowbridge
    >>> x = np.arange(6, dtype=np.int64).reshape(2, 3)
    >>> arrowbridge.to_arrow(x).to_numpy_ndarray()
    array([[0, 1, 2],
           [3, 4, 5]])
    >>> f = np.asfortranarray(x)
    >>> arrowbridge.to_arrow(f, whole=True).type.permutation
    [1, 0]
    >>> arrowbridge.to_arrow(f, copy=False)
    Traceback (most recent call last):
    ...
    arrowbridge.errors.CopyRequiredError: array of shape (2, 3) and dtype int64: axis 0 is not ...
    """
    if not isinstance(x, np.ndarray):
        # DLPack producers (JAX, PyTorch, ...) as NumPy views of their memory.
        x = _native.to_numpy(x) if hasattr(x, "__dlpack__") else np.asarray(x)
    names = None if dim_names is None else [str(n) for n in dim_names]
    return pa.array(_Exported(*_native.export_array(x, dim_names=names, copy=copy, whole=whole)))


class _Exported:
    """Capsules of an exported array, handed to pyarrow through the Arrow PyCapsule
    interface (``pa.array`` imports any object with ``__arrow_c_array__``)."""

    __slots__ = ("capsules",)

    def __init__(self, schema: object, array: object) -> None:
        self.capsules = (schema, array)

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return self.capsules


def to_numpy(obj: Any, *, copy: bool | None = None) -> np.ndarray:
    """Converts an Arrow array to a NumPy array over the same memory.

    Accepts pyarrow arrays (``FixedShapeTensorArray`` and ``ChunkedArray`` included), NumPy
    arrays (returned as they are), and any object with ``__arrow_c_array__`` or
    ``__arrow_c_stream__`` (nanoarrow, arro3, polars Series, duckdb results, …). A table of
    one column (a pyarrow Table, a polars DataFrame, a duckdb relation) is that column.
    DLPack producers (JAX and PyTorch arrays, anything with ``__dlpack__``) become a view of
    their memory with their shape and strides, read-only when the producer says so; a
    tensor on a device the CPU cannot read raises :class:`UnsupportedDeviceError`.

    Zero-copy for a single chunk of a supported type; the result is read-only and keeps its
    source alive. Several chunks are concatenated, bit-packed ``bool`` is unpacked and
    misaligned buffers are realigned: each is a copy, which ``copy=False`` turns into
    :class:`CopyRequiredError` (or :class:`MisalignedBufferError`). ``copy=True`` always
    returns a fresh, writable C-ordered array. Nulls raise :class:`NullValuesError`.

    >>> import pyarrow as pa, arrowbridge
    >>> arrowbridge.to_numpy(pa.array([1.5, 2.5]))
    array([1.5, 2.5])
    >>> arrowbridge.to_numpy(pa.chunked_array([[1, 2], [3]]))
    array([1, 2, 3])
    >>> arrowbridge.to_numpy(pa.table({"v": [1.0, 2.0]}))
    array([1., 2.])
    >>> import jax.numpy as jnp
    >>> arrowbridge.to_numpy(jnp.arange(3, dtype=jnp.float32))  # through DLPack, no copy
    array([0., 1., 2.], dtype=float32)
    >>> arrowbridge.to_numpy(pa.array([1, None]))
    Traceback (most recent call last):
    ...
    arrowbridge.errors.NullValuesError: field "" has 1 null value(s); ...
    """
    return _native.to_numpy(obj, copy=copy)


# Doctests of the functions implemented in Rust.
__test__ = {"call": call.__doc__, "kernels": kernels.__doc__, "load_kernels": load_kernels.__doc__}

__all__ = [
    "AlreadyBorrowedError",
    "ArrowBridgeError",
    "AuthenticationError",
    "ByteOrderError",
    "Client",
    "CopyRequiredError",
    "DTypeMismatchError",
    "FileError",
    "FlightCallError",
    "FlightTimeoutError",
    "InvalidArrowDataError",
    "InvalidFileError",
    "InvalidLocationError",
    "InvalidNameError",
    "IpcReader",
    "ItemReplacedError",
    "ItemStream",
    "KernelError",
    "KernelParameterError",
    "MisalignedBufferError",
    "NotDistributableError",
    "NullValuesError",
    "OutOfMemoryError",
    "PluginError",
    "ReadOnlyError",
    "RemoteInvalidError",
    "RemoteNotFoundError",
    "RemoteOutOfMemoryError",
    "RemoteStorageError",
    "Server",
    "ServerStartError",
    "ServerUnavailableError",
    "ShapeError",
    "TLSConfigError",
    "UnknownKernelError",
    "UnsupportedDeviceError",
    "UnsupportedTypeError",
    "__version__",
    "aio",
    "call",
    "cluster",
    "connect",
    "iter_ipc",
    "kernels",
    "load_kernels",
    "open_ipc",
    "read_ipc",
    "serve",
    "shm",
    "to_arrow",
    "to_numpy",
    "write_ipc",
]


# Imported here, not on first use through a module ``__getattr__``: CPython 3.11 does not
# specialize attribute lookups on a module that has one, which made every
# ``arrowbridge.call`` 25 ns slower. ``arrowbridge.cluster`` imports Ray (an optional
# dependency, ``pip install arrowbridge[ray]``) only when a function of it needs Ray.
from . import aio, cluster  # noqa: E402
