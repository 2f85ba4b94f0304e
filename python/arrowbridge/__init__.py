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
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa

from . import _extension, _native, shm
from ._native import call, kernels, load_kernels
from ._ragged import is_ragged_list
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
    InvalidArgumentError,
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
from .ipc import AtomicWrite, IpcReader, iter_ipc, open_ipc, read_ipc, write_ipc

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

    A ``list`` of arrays (NumPy arrays of one or more dimensions, DLPack or Arrow producers)
    of one dtype and rank is ragged data, even when the shapes agree: it becomes one
    ``arrow.variable_shape_tensor`` array (pyarrow's own canonical type; complex data uses
    ``arrowbridge.complex_variable_shape_tensor``), one row per array, its values copied
    once into one 64-byte aligned buffer and ``uniform_shape`` detected. ``dim_names`` then
    name the arrays' axes. A list of numbers or nested lists is read by ``np.asarray`` as
    before.

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
    >>> images = [np.zeros((4, 6, 3), np.uint8), np.ones((2, 5, 3), np.uint8)]
    >>> ragged = arrowbridge.to_arrow(images, dim_names=["H", "W", "C"])
    >>> ragged.type  # doctest: +ELLIPSIS
    BaseExtensionType(extension<arrow.variable_shape_tensor[value_type=uint8, ndim=3, ...]>)
    >>> ragged.type.storage_type
    StructType(struct<data: list<item: uint8>, shape: fixed_size_list<item: int32>[3]>)
    >>> [a.shape for a in arrowbridge.to_numpy(ragged)]
    [(4, 6, 3), (2, 5, 3)]
    """
    if is_ragged_list(x):
        if whole:
            raise ValueError("whole=True takes one array, not a list of arrays")
        if copy is False:
            raise CopyRequiredError(
                f"a list of {len(x)} arrays: its elements must be copied into one Arrow buffer; "
                "a copy is required but copy=False was given (variable_shape_tensor(values, "
                "shapes) wraps flat values without a copy)"
            )
        names = None if dim_names is None else [str(n) for n in dim_names]
        return pa.array(_Exported(*_native.export_ragged_list(x, dim_names=names)))
    if not isinstance(x, np.ndarray):
        # DLPack producers (JAX, PyTorch, ...) as NumPy views of their memory.
        x = _native.to_numpy(x) if hasattr(x, "__dlpack__") else np.asarray(x)
    names = None if dim_names is None else [str(n) for n in dim_names]
    return pa.array(_Exported(*_native.export_array(x, dim_names=names, copy=copy, whole=whole)))


def variable_shape_tensor(
    values: Any,
    shapes: Any,
    *,
    dim_names: Sequence[str] | None = None,
    uniform_shape: Sequence[int | None] | None = None,
    permutation: Sequence[int] | None = None,
) -> pa.Array:
    """Wraps flat ``values`` and the rows' ``shapes`` as an ``arrow.variable_shape_tensor``
    array over the same memory (no copy of the values).

    ``values`` holds every row's elements, row after row, each row in C order of its shape
    (any C-contiguous array, read flat; other layouts are copied first). ``shapes`` is an
    ``(n, ndim)`` integer array, row ``i``'s shape in row ``i`` (an ``(n,)`` array gives the
    lengths of 1-D rows). Each shape's size must be non-negative and fit in int32, and the
    shapes' element counts must add up to ``values.size``. With ``permutation`` the shapes
    are the physical ones: row ``i`` is seen with axes ``permutation`` of its shape, as
    ``np.transpose`` would. ``dim_names`` and ``uniform_shape`` (a size per axis, ``None``
    where it varies; checked against every row) describe the physical axes too.

    ``bool`` values are bit-packed into Arrow's ``bool`` (a copy). The result keeps
    ``values`` alive. :func:`to_numpy` with ``ragged=True`` is the inverse.

    >>> import numpy as np, arrowbridge
    >>> values = np.arange(10, dtype=np.float32)
    >>> t = arrowbridge.variable_shape_tensor(values, [[2, 3], [1, 4]])
    >>> [a.tolist() for a in arrowbridge.to_numpy(t)]
    [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [[6.0, 7.0, 8.0, 9.0]]]
    >>> v, s = arrowbridge.to_numpy(t, ragged=True)
    >>> np.shares_memory(v, values), s.tolist()
    (True, [[2, 3], [1, 4]])
    >>> arrowbridge.variable_shape_tensor(values, [[2, 3], [2, 4]])
    Traceback (most recent call last):
    ...
    arrowbridge.errors.ShapeError: variable_shape_tensor: the shapes of the 2 rows hold 14 ...
    """
    shapes = np.asarray(shapes)
    if shapes.dtype.kind not in "iu" and shapes.size:
        raise ShapeError(f"shapes must be integers, got dtype {shapes.dtype}")
    if shapes.dtype.kind == "u" and shapes.size and shapes.max() > np.iinfo(np.int64).max:
        raise ShapeError("shapes: a size does not fit in int32")
    shapes = shapes.astype(np.int64, copy=False)
    if not isinstance(values, np.ndarray) and not hasattr(type(values), "__dlpack__"):
        if not hasattr(type(values), "__arrow_c_array__"):
            values = np.asarray(values)
    return pa.array(
        _Exported(
            *_native.export_ragged_parts(
                values,
                shapes,
                dim_names=None if dim_names is None else [str(n) for n in dim_names],
                uniform_shape=None
                if uniform_shape is None
                else [None if d is None else int(d) for d in uniform_shape],
                permutation=None if permutation is None else [int(p) for p in permutation],
            )
        )
    )


class _Exported:
    """Capsules of an exported array, handed to pyarrow through the Arrow PyCapsule
    interface (``pa.array`` imports any object with ``__arrow_c_array__``)."""

    __slots__ = ("capsules",)

    def __init__(self, schema: object, array: object) -> None:
        self.capsules = (schema, array)

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return self.capsules


@overload
def to_numpy(
    obj: Any, *, copy: bool | None = None, ragged: Literal[False] = False
) -> np.ndarray | list[np.ndarray]: ...
@overload
def to_numpy(
    obj: Any, *, copy: bool | None = None, ragged: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...
def to_numpy(
    obj: Any, *, copy: bool | None = None, ragged: bool = False
) -> np.ndarray | list[np.ndarray] | tuple[np.ndarray, np.ndarray]:
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

    An ``arrow.variable_shape_tensor`` (ragged data) becomes a list of NumPy arrays, one per
    row, each a read-only view of the Arrow memory with its own shape (the permutation
    applied); ``copy=True`` gives owned arrays. With ``ragged=True`` the result is
    ``(values, shapes)`` instead: all values as one flat array and the rows' physical shapes
    as an ``(n, ndim)`` int32 array, both views — the inverse of
    :func:`variable_shape_tensor` (a list of arrays is copied into that form).
    ``bool`` values are bit-packed in Arrow, so reading them is a copy.

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
    if ragged:
        return _native.ragged_parts(obj, copy=copy)
    return _native.to_numpy(obj, copy=copy)


# Doctests of the functions implemented in Rust.
__test__ = {"call": call.__doc__, "kernels": kernels.__doc__, "load_kernels": load_kernels.__doc__}

__all__ = [
    "AlreadyBorrowedError",
    "ArrowBridgeError",
    "AtomicWrite",
    "AuthenticationError",
    "ByteOrderError",
    "Client",
    "CopyRequiredError",
    "DTypeMismatchError",
    "FileError",
    "FlightCallError",
    "FlightTimeoutError",
    "InvalidArgumentError",
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
    "variable_shape_tensor",
    "write_ipc",
]


# Imported here, not on first use through a module ``__getattr__``: CPython 3.11 does not
# specialize attribute lookups on a module that has one, which made every
# ``arrowbridge.call`` 25 ns slower. ``arrowbridge.cluster`` imports Ray (an optional
# dependency, ``pip install arrowbridge[ray]``) only when a function of it needs Ray.
from . import aio, cluster  # noqa: E402
