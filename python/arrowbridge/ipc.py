"""Arrow IPC files and streams: NumPy arrays in, memory-mapped NumPy views out.

>>> import numpy as np, arrowbridge, tempfile, os
>>> tmp = tempfile.TemporaryDirectory()
>>> path = os.path.join(tmp.name, "data.arrow")
>>> arrowbridge.write_ipc(path, {"embeddings": np.ones((4, 3), np.float32), "labels": np.arange(4)})
>>> arrays = arrowbridge.read_ipc(path)
>>> arrays["embeddings"].shape, arrays["labels"].tolist()
((4, 3), [0, 1, 2, 3])
>>> tmp.cleanup()  # the views stay valid: the mapping outlives the file's name
>>> arrays["labels"].sum()
np.int64(6)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from . import _native
from ._ragged import is_ragged_list
from .errors import InvalidArrowDataError, UnsupportedTypeError

IpcReader = _native.IpcReader
# ``with AtomicWrite(path) as tmp:`` writes ``tmp``, renamed to ``path`` when the block ends
# without an exception (the helper write_ipc and the command's convert use).
AtomicWrite = _native.AtomicWrite

# Doctests of the reader, which is implemented in Rust.
__test__ = {
    "AtomicWrite": AtomicWrite.__doc__,
    "IpcReader": IpcReader.__doc__,
    "IpcReader.read_all": IpcReader.read_all.__doc__,
    "IpcReader.read_batch": IpcReader.read_batch.__doc__,
    "IpcReader.describe": IpcReader.describe.__doc__,
}

Format = Literal["file", "stream"]
CompressionName = Literal["lz4", "zstd"]


def write_ipc(
    path: str | os.PathLike[str],
    data: Any,
    *,
    format: Format = "file",
    compression: CompressionName | None = None,
) -> None:
    """Writes arrays to an Arrow IPC file (or stream) at ``path``, atomically.

    ``data`` is a NumPy array (stored as column ``"data"``), a dict of name -> array (NumPy,
    pyarrow or any Arrow PyCapsule producer), or a table: a pyarrow ``Table``,
    ``RecordBatch`` or ``RecordBatchReader``, a polars ``DataFrame``, or anything else with
    ``__arrow_c_stream__`` (written as it is). DLPack producers (JAX, PyTorch) count as
    arrays, like NumPy's. A list of arrays (of one dtype and rank, any shapes) is ragged data:
    an ``arrow.variable_shape_tensor`` column of one row per array, which ``read_ipc`` gives
    back as a list of views.

    Arrays that share the length of axis 0 become rows of one table (N-D arrays as
    ``arrow.fixed_shape_tensor`` columns), so pyarrow, polars and duckdb read N rows. Any other
    set of shapes is stored one whole array per column in a single row (marked
    ``arrowbridge.form = element``), so every dict round-trips exactly.

    Buffers are 64-byte aligned. ``compression`` ("lz4" or "zstd") compresses them; reading
    then decompresses (a copy). The file is written to a temporary file in the same directory,
    flushed to disk and renamed into place: a crash mid-write leaves the previous file intact.

    >>> import numpy as np, pyarrow as pa, arrowbridge, tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "rows.arrow")
    ...     arrowbridge.write_ipc(path, {"id": np.arange(3), "vec": np.ones((3, 2))})
    ...     pa.ipc.open_file(path).read_all().num_rows
    3
    """
    if isinstance(data, np.ndarray) or _is_dlpack_only(data) or is_ragged_list(data):
        data = {"data": data}
    if isinstance(data, Mapping):
        names = [str(n) for n in data]
        arrays = [_array_like(v) for v in data.values()]
        _native.write_arrays(os.fspath(path), names, arrays, format=format, compression=compression)
        return
    if not hasattr(data, "__arrow_c_stream__") and hasattr(data, "to_batches"):
        import pyarrow as pa

        data = pa.Table.from_batches([data])
    if not hasattr(data, "__arrow_c_stream__"):
        raise UnsupportedTypeError(
            f"write_ipc: cannot write {type(data).__name__}; expected a numpy.ndarray, a dict of "
            "arrays, or a table with __arrow_c_stream__"
        )
    data = _checked_reader(data)
    _native.write_stream(os.fspath(path), data, format=format, compression=compression)


def _array_like(value: Any) -> Any:
    """A column as the native layer takes it: NumPy arrays (masked ones included, so that
    their mask is seen), Arrow producers and ragged lists of arrays as they are, anything else
    through NumPy."""
    if isinstance(value, np.ndarray) or hasattr(value, "__arrow_c_array__"):
        return value
    if is_ragged_list(value):
        return value
    if hasattr(value, "__arrow_c_stream__") or hasattr(value, "__dlpack__"):
        return value
    return np.asarray(value)


def _is_dlpack_only(value: Any) -> bool:
    """A DLPack producer that is not also an Arrow producer (JAX and PyTorch arrays): one
    array, not a table."""
    return (
        hasattr(value, "__dlpack__")
        and not hasattr(value, "__arrow_c_array__")
        and not hasattr(value, "__arrow_c_stream__")
    )


def _checked_reader(data: Any) -> Any:
    """A pyarrow RecordBatchReader that refuses a batch whose schema is not the stream's.

    The C stream interface carries one schema for the whole stream: a batch of int64 under a
    float64 schema would arrive as float64 bytes. pyarrow's readers do not check their
    batches, so the check happens here, before the batch crosses.
    """
    import pyarrow as pa

    if not isinstance(data, pa.RecordBatchReader):
        return data
    schema = data.schema

    def batches() -> Iterator[pa.RecordBatch]:
        for index, batch in enumerate(data):
            if not batch.schema.equals(schema):
                raise InvalidArrowDataError(
                    f"write_ipc: batch {index} has schema {batch.schema.to_string()!r}, "
                    f"not the stream's {schema.to_string()!r}"
                )
            yield batch

    return pa.RecordBatchReader.from_batches(schema, batches())


def read_ipc(
    path: str | os.PathLike[str], *, mmap: bool = True, columns: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Reads every column of an Arrow IPC file or stream as a NumPy array.

    With ``mmap=True`` (the default) the file is memory-mapped and each array of a one-batch,
    uncompressed file is a read-only view into the mapping: nothing is read until it is
    touched, and the mapping lives as long as any array. A file of several batches is
    concatenated per column (a copy; :func:`iter_ipc` gives views batch by batch), and
    compressed files are decompressed (a copy). ``mmap=False`` reads the file into memory.

    Files written by pyarrow (``ipc.new_file``, ``ipc.new_stream``, ``feather.write_feather``)
    read as well as arrowbridge's own; columns of types without a NumPy equivalent raise
    :class:`UnsupportedTypeError` naming the column. ``columns`` reads only the columns it
    names, in its order: the others are never decoded, so they may be of any type.

    >>> import numpy as np, arrowbridge, tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "x.arrow")
    ...     arrowbridge.write_ipc(path, np.arange(4.0))
    ...     x = arrowbridge.read_ipc(path)["data"]
    ...     x, x.flags.writeable
    (array([0., 1., 2., 3.]), False)
    >>> import pyarrow as pa
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "mixed.arrow")
    ...     arrowbridge.write_ipc(path, pa.table({"name": ["a", "b"], "score": [0.5, 0.7]}))
    ...     arrowbridge.read_ipc(path, columns=["score"])
    {'score': array([0.5, 0.7])}
    """
    return _reader(path, mmap, columns).read_all()


def _reader(path: str | os.PathLike[str], mmap: bool, columns: Sequence[str] | None) -> IpcReader:
    if isinstance(columns, str):
        raise TypeError(f"columns must be a list of names, not the string {columns!r}")
    names = None if columns is None else [str(c) for c in columns]
    return IpcReader(os.fspath(path), mmap=mmap, columns=names)


def iter_ipc(
    path: str | os.PathLike[str], *, mmap: bool = True, columns: Sequence[str] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the columns of each record batch in turn, as views (no batch is copied).

    Each batch is decoded when it is reached, so a compressed file is decompressed one batch
    at a time and only the batch in hand is held. ``columns`` as in :func:`read_ipc`.

    >>> import numpy as np, pyarrow as pa, arrowbridge, tempfile, os
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "batches.arrow")
    >>> table = pa.Table.from_batches([pa.record_batch({"x": [1, 2]}), pa.record_batch({"x": [3]})])
    >>> arrowbridge.write_ipc(path, table)
    >>> [batch["x"].tolist() for batch in arrowbridge.iter_ipc(path)]
    [[1, 2], [3]]
    >>> tmp.cleanup()
    """
    reader = _reader(path, mmap, columns)
    for index in range(reader.num_batches):
        yield reader.read_batch(index)


def open_ipc(
    path: str | os.PathLike[str], *, mmap: bool = True, columns: Sequence[str] | None = None
) -> IpcReader:
    """Opens an Arrow IPC file or stream for inspection and batch-by-batch reading.

    Opening reads the schema and the batches' headers only; ``describe()`` reads no data,
    and each batch is decoded when it is read. ``columns`` as in :func:`read_ipc`.

    The returned :class:`IpcReader` has ``format``, ``num_batches``, ``num_rows``, ``names``,
    ``schema`` and ``mapping``, and reads with ``describe()``, ``read_all()`` and
    ``read_batch(index)``.

    >>> import numpy as np, arrowbridge, tempfile, os
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "x.arrow")
    >>> arrowbridge.write_ipc(path, {"x": np.arange(3.0)})
    >>> reader = arrowbridge.open_ipc(path)
    >>> reader.format, reader.num_batches, reader.num_rows, reader.names
    ('file', 1, 3, ['x'])
    >>> reader.describe()  # doctest: +NORMALIZE_WHITESPACE
    [{'name': 'x', 'dtype': 'float64', 'shape': (3,), 'nbytes': 24, 'zero_copy': True,
      'error': None}]
    >>> reader.read_all()["x"], reader.read_batch(0)["x"]
    (array([0., 1., 2.]), array([0., 1., 2.]))
    >>> tmp.cleanup()
    """
    return _reader(path, mmap, columns)
