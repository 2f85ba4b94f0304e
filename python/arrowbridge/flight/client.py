"""The arrowbridge Flight client: native (Rust), NumPy in and NumPy out.

>>> import numpy as np, arrowbridge
>>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
...     client.put("x", np.arange(6.0).reshape(2, 3))
...     client.get("x")
array([[0., 1., 2.],
       [3., 4., 5.]])
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .. import _native
from ..errors import NotDistributableError, ShapeError, UnknownKernelError, _as_part_of
from ..ipc import _array_like

#: How the partial results of a reduction over rows combine (a kernel's distribution
#: ``{"reduce": ...}``): arrays, 0-d ones included, as the kernel's own results are.
COMBINE: dict[str, Callable[[Any, Any], Any]] = {
    "sum": lambda a, b: np.asarray(np.add(a, b)),
    "min": lambda a, b: np.asarray(np.minimum(a, b)),
    "max": lambda a, b: np.asarray(np.maximum(a, b)),
}

#: Rows per batch of :meth:`Client.call_stream` on a stored item, by default: about this
#: many bytes of it.
_CALL_BATCH_BYTES = 8 << 20


def kernel_distribution(
    described: Mapping[str, Any], kernel: str, ndim: int, params: Mapping[str, Any]
) -> Any:
    """How ``kernel`` runs on parts of its first argument's rows (``"rows"``, ``{"reduce":
    ...}`` or ``"local"``), from a server's ``describe_kernels`` and the call's parameters:
    a reduction over axes other than 0 keeps rows apart, so it is row-wise."""
    if kernel not in described:
        raise UnknownKernelError(
            f"no kernel {kernel!r} on the server; available: " + ", ".join(sorted(described))
        )
    dist = described[kernel]["distribution"]
    if not isinstance(dist, dict):
        return dist
    axis_param = dist.get("axis")
    axis = None if axis_param is None else params.get(axis_param)
    if axis is None:
        return dist
    axes = [axis] if isinstance(axis, int) else list(axis)
    if 0 in [a % ndim if ndim else a for a in axes]:
        return dist
    return "rows"  # reduces within rows: rows stay apart


def check_rows(kernel: str, outputs: Sequence[Any], rows: int, of: str) -> None:
    """Raises :class:`ShapeError` unless each output of a row-wise kernel has ``rows`` rows."""
    for out in outputs:
        if np.ndim(out) == 0 or len(out) != rows:
            raise ShapeError(
                f"kernel {kernel!r} is declared row-wise, but its result on {of} has shape "
                f"{np.shape(out)}, not {rows} rows"
            )


@dataclass(frozen=True)
class Stored:
    """A kernel argument that names an array already on the server (not sent again).

    >>> import arrowbridge
    >>> arrowbridge.Client.stored("x")
    Stored(name='x')
    """

    name: str


def _columns(data: Any) -> tuple[str, list[str], list[Any]]:
    """The form and the named columns of what a put stores."""
    if isinstance(data, Mapping):
        return "dict", [str(k) for k in data], [_array_like(v) for v in data.values()]
    if isinstance(data, pa.Table | pa.RecordBatch):
        return "table", list(data.column_names), list(data.columns)
    return "array", ["data"], [_array_like(data)]


def _streamed(data: Any) -> bool:
    """Whether a put's ``data`` is a stream of batches (an iterator, or an Arrow stream that
    is not a whole table) rather than one item."""
    if isinstance(data, Mapping | pa.Table | pa.RecordBatch | list | tuple) or hasattr(
        data, "__array__"
    ):
        return False
    if hasattr(data, "__arrow_c_array__") or hasattr(data, "__dlpack__"):
        return False
    return isinstance(data, Iterator) or hasattr(data, "__arrow_c_stream__")


def _arg(a: Any) -> tuple[str, Any]:
    """A kernel argument as the native client takes it. Ragged data (a list of arrays, or an
    Arrow producer of ``arrow.variable_shape_tensor``) goes as it is: the native client
    sends it as a ragged kernel receives it."""
    if isinstance(a, Stored):
        return ("stored", a.name)
    return ("array", _array_like(a))


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# -- call_stream's parts, shared by the blocking and the asyncio client ---------------------


def _check_batch_rows(batch_rows: Any) -> None:
    if batch_rows is not None and (
        isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1
    ):
        raise ShapeError(f"batch_rows must be an int >= 1, got {batch_rows!r}")


def _stream_source(kernel: str, source: Any) -> Any:
    """``source`` of a call_stream that is not a stored item: a stream of batches."""
    if not _streamed(source):
        raise ShapeError(
            f"call_stream {kernel!r}: the source is Client.stored(name) or a stream of arrays "
            f"(an iterator, a RecordBatchReader), not {type(source).__name__}; call() takes "
            "one array"
        )
    return source


def _one_array(kernel: str, index: int, batch: Any) -> Any:
    """The array of batch ``index`` of a call_stream's source (a batch of several columns
    is not one kernel argument)."""
    _, names, arrays = _columns(batch)
    if len(arrays) != 1:
        raise ShapeError(
            f"call_stream {kernel!r}: batch {index} has columns {names}; a kernel takes one "
            "array per argument (stream the column you want)"
        )
    return arrays[0]


def _batch_arrays(kernel: str, source: Any) -> Iterator[Any]:
    """The arrays of a stream of batches, one per batch."""
    for index, batch in enumerate(_raw_batches(source)):
        yield _one_array(kernel, index, batch)


def _rank(info: Mapping[str, Any]) -> int:
    """The rank of a stored item's first column, from the native client's info."""
    columns = json.loads(info["columns"])
    return len(columns[0].get("shape", [0])) if columns else 1


def _stored_calls(
    name: str, info: Mapping[str, Any], batch_rows: int | None, rest: list[tuple[str, Any]]
) -> Iterator[tuple[int, str, list[tuple[str, Any]]]]:
    """The calls of a call_stream on the stored item ``name`` (of which ``info`` is the
    native client's description): (rows, what they are, arguments), each on a view of its
    rows of the one version ``info`` names."""
    rows, version = int(info["rows"]), info["version"]
    if batch_rows is None:
        batch_rows = max(1, _CALL_BATCH_BYTES * rows // max(1, int(info["bytes"])))
    for start in range(0, rows, batch_rows):
        end = min(rows, start + batch_rows)
        of = f"rows [{start}, {end}) of {name!r}"
        yield end - start, of, [("stored_rows", (name, version, start, end)), *rest]


def _sent_calls(
    arrays: Iterator[Any], rest: list[tuple[str, Any]]
) -> Iterator[tuple[int, str, list[tuple[str, Any]]]]:
    """The calls of a call_stream on arrays sent one by one."""
    for index, array in enumerate(arrays):
        yield len(array), f"batch {index}", [("array", array), *rest]


class _Results:
    """What a call_stream of ``kernel`` yields, from the results of its batches' calls: each
    result of a row-wise kernel (checked to keep its batch's rows), or the combination of a
    reduction's partials at the end."""

    def __init__(
        self, kernel: str, described: Mapping[str, Any], ndim: int, params: Mapping[str, Any]
    ):
        self.kernel = kernel
        self.dist = kernel_distribution(described, kernel, ndim, params)
        if self.dist == "local":
            raise NotDistributableError(
                f"kernel {kernel!r} does not say how its results on batches of rows combine "
                "(its distribution is 'local'): call it on the whole array"
            )
        self.partials: tuple[Any, ...] | None = None

    def add(self, rows: int, of: str, result: Any) -> list[Any]:
        """What to yield now, after the result of the call on ``rows`` rows (``of``)."""
        outputs = result if isinstance(result, tuple) else (result,)
        if self.dist == "rows":
            check_rows(self.kernel, outputs, rows, of)
            return [result]
        combine = COMBINE[self.dist["reduce"]]
        self.partials = (
            outputs if self.partials is None else tuple(map(combine, self.partials, outputs))
        )
        return []

    def end(self) -> list[Any]:
        """What to yield once every batch was called."""
        if self.partials is None:
            return []
        return [self.partials[0] if len(self.partials) == 1 else self.partials]


def _raw_batches(data: Any) -> Iterator[Any]:
    """The batches of a stream, as they come (arrays, dicts, record batches)."""
    if not isinstance(data, Iterator) and hasattr(data, "__arrow_c_stream__"):
        data = pa.RecordBatchReader.from_stream(data)
    yield from data


def _batches(data: Any) -> Iterator[tuple[str, list[str], list[Any]]]:
    """The batches of a streamed put, each as (form, names, columns). A batch with an empty
    list as a column (no rows of ragged data, whose type an empty list does not say) and no
    rows in any other column adds nothing, and is skipped."""
    for batch in _raw_batches(data):
        if not _no_ragged_rows(batch):
            yield _columns(batch)


def _no_ragged_rows(batch: Any) -> bool:
    """Whether a batch is an empty list, or a dict with an empty list among its columns and
    no rows in the others."""
    columns = list(batch.values()) if isinstance(batch, Mapping) else [batch]
    return any(type(c) is list and not c for c in columns) and all(
        len(c) == 0 for c in columns if hasattr(c, "__len__")
    )


class ItemStream:
    """The batches of a stored item as they arrive, from :meth:`Client.stream`: each an
    array (for an item put as one array) or a dict of arrays, contiguous and aligned as
    :meth:`Client.get`'s are. A few batches are fetched ahead while you work on one; memory
    stays at a few batches whatever the item's size.

    ``rows`` is the number of rows it carries in all. Leaving a ``with`` block or calling
    :meth:`close` stops it (batches fetched ahead are dropped).
    """

    def __init__(self, native: Any, form: str):
        self._native = native
        self._form = form
        self._ahead: list[Any] = []
        self.rows: int = native.rows

    def __iter__(self) -> ItemStream:
        return self

    def __next__(self) -> Any:
        if self._ahead:
            return self._ahead.pop()
        arrays = next(self._native)
        if self._form == "array":
            return next(iter(arrays.values()))
        return arrays

    def _started(self) -> ItemStream:
        """This stream, its first batch fetched: what fetching it raises is raised here (and
        the stream closed), before any rows reach the caller."""
        try:
            self._ahead.append(self.__next__())
        except StopIteration:
            pass
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stops the stream (batches fetched ahead are dropped); reading on raises
        :class:`FlightCallError`. Idempotent."""
        self._native.close()

    def __enter__(self) -> ItemStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrowbridge.ItemStream of {self.rows} rows>"


def _describe(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": info["name"],
        "rows": info["rows"],
        "bytes": info["bytes"],
        "schema": pa.ipc.read_schema(pa.py_buffer(info["schema_ipc"])),
        "columns": json.loads(info["columns"]),
        "endpoints": info["endpoints"],
    }


def _names(what: str, names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise ShapeError(f"{what} must be a sequence of column names, got {names!r}")
    names = list(names)
    if not all(isinstance(n, str) for n in names):
        raise ShapeError(f"{what} must be a sequence of column names, got {names!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ShapeError(f"{what} names {', '.join(map(repr, twice))} more than once")
    return names


def _rows(rows: tuple[int, int] | None) -> tuple[int, int] | None:
    if rows is None:
        return None
    try:
        start, end = rows
        valid = all(isinstance(r, int) and not isinstance(r, bool) for r in (start, end))
    except (TypeError, ValueError):
        valid = False
    if not valid or start < 0 or end < start or end >= 2**63:
        raise ShapeError(f"rows must be (start, end) with 0 <= start <= end < 2**63, got {rows!r}")
    return (start, end)


class _Connected:
    """What the blocking and the asyncio client share: the native client, made again in a
    forked child."""

    location: str
    _options: dict[str, Any]
    _native: Any
    _closed: bool

    def _connect(self, location: str, **options: Any) -> None:
        self.location = location
        self._options = options
        self._native = _native.FlightClient(location, **options)
        self._closed = False
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        # The connection's runtime threads exist in the parent only: the child neither uses
        # nor drops it, and connects again.
        self._native.abandon()
        if not self._closed:
            self._native = _native.FlightClient(self.location, **self._options)


class Client(_Connected):
    """A Flight client speaking NumPy (see :func:`connect`). Works against any Flight server
    for put/get/list/info/delete; ``call`` needs an arrowbridge server.

    The client is native (Rust): data moves with the GIL released, received columns land in
    one contiguous, aligned NumPy array each, and a large item offered as several endpoints
    is fetched over parallel connections. One client may be used from several threads.

    Every call takes ``timeout=`` (seconds; the client's default from :func:`connect` when
    not given) and raises :class:`FlightTimeoutError` past it; Ctrl+C stops a call within
    about 20 ms with ``KeyboardInterrupt``. Either way the call is cancelled (the server sees
    the stream reset, what was received is freed) and the client stays usable. In a child
    forked from the process (``os.fork``, a ``multiprocessing`` 'fork' pool) the client
    reconnects on its first call; a stream or streamed put opened before the fork raises
    :class:`FlightCallError` there, and goes on in the parent.

    >>> import numpy as np, arrowbridge
    >>> with arrowbridge.serve() as server, arrowbridge.Client(server.location) as client:
    ...     client.put("x", np.arange(3))
    ...     client.get("x")
    array([0, 1, 2])
    """

    def __init__(
        self,
        location: str,
        *,
        token: str | None = None,
        tls_root_certs: bytes | None = None,
        shm: bool | None = None,
        timeout: float | None = None,
        trusted: Sequence[str] = (),
    ):
        self._connect(
            location,
            token=token,
            tls_root_certs=tls_root_certs,
            shm=shm,
            timeout=timeout,
            trusted=list(trusted),
        )

    def _cancel(self) -> None:
        # Stops this client's calls under way on other threads (a fan-out's, after Ctrl+C).
        if not self._closed:
            self._native.cancel()

    def put(self, name: str, data: Any, *, timeout: float | None = None) -> None:
        """Stores ``data`` under ``name``: a NumPy array, a dict of arrays (rows of one table
        when they share axis 0, any shapes otherwise), or a pyarrow Table/RecordBatch of
        tensor columns. :meth:`get` returns it in the same form; the form is recorded in the
        item's schema metadata (``arrowbridge.item``), so other clients can see it too.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("pair", {"id": np.arange(2), "vec": np.ones((2, 3), np.float32)})
        ...     client.info("pair")["rows"]
        2

        A list of arrays (ragged data: images of different sizes), alone or as a value of a
        dict, is stored as one ``arrow.variable_shape_tensor`` column, one row per array, and
        got back as a list of read-only views; it travels over gRPC.

        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("imgs", [np.ones((2, 3)), np.ones((4, 3))])
        ...     [a.shape for a in client.get("imgs")]
        [(2, 3), (4, 3)]

        ``data`` may also be a stream of batches, sent as they come with constant memory:
        an iterator (a generator) of arrays or of dicts of arrays, a
        ``pyarrow.RecordBatchReader``, anything with ``__arrow_c_stream__`` other than a
        table, or :func:`arrowbridge.iter_ipc`'s batches. Each batch is rows of the item
        (arrays sharing their first axis, with the first batch's dtypes and row shapes);
        the item becomes visible, as one version, when the stream ends. If the stream
        raises, or Ctrl+C or the timeout (which bounds each batch) comes while batches are
        still being sent, the put is reset and the server stores nothing; once the whole
        stream is sent, the server may store it before it hears of a cancellation (the
        error then says so). Streamed puts go over gRPC, not shared memory.

        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("big", (np.full((1000, 4), i, np.float32) for i in range(5)))
        ...     client.info("big")["rows"]
        5000
        """
        if _streamed(data):
            self._put_stream(name, data, timeout)
            return
        form, names, arrays = _columns(data)
        self._native.put(name, names, arrays, form, timeout=timeout)

    def _put_stream(self, name: str, data: Any, timeout: float | None) -> None:
        batches = _batches(data)
        try:
            form, names, arrays = next(batches)
        except StopIteration:
            raise ShapeError(f"put {name!r}: the stream had no batches; nothing to store") from None
        put = self._native.put_stream(name, form)
        try:
            put.send(names, arrays, timeout=timeout)
            for index, (batch_form, names, arrays) in enumerate(batches, start=1):
                if batch_form != form:
                    raise ShapeError(
                        f"put {name!r}: batch {index} is a {batch_form}, the first was a {form}"
                    )
                put.send(names, arrays, timeout=timeout)
            put.finish(timeout=timeout)
        except BaseException:
            put.abort()
            raise

    def get(
        self,
        name: str,
        *,
        columns: Sequence[str] | None = None,
        rows: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """What was put under ``name``, in the form it was put: an array, or a dict of arrays
        (for a dict or a table, and for items other clients put). Each array is one
        contiguous, aligned NumPy array: writeable and owning the received bytes when they
        came over the network, read-only views of sealed shared memory when the server is on
        this host (see :func:`connect`'s ``shm``).

        The arrays are one version of the item: a put that replaces it while the get reads
        never mixes rows of two versions into one result.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("m", np.eye(2))
        ...     client.put("d", {"a": np.arange(2)})
        ...     client.get("m"), client.get("d")
        (array([[1., 0.],
               [0., 1.]]), {'a': array([0, 1])})

        ``rows=(start, end)`` reads those rows only, ``columns=[...]`` those columns of a
        dict or table (in the order given); the server sends nothing else. Slices are read
        over gRPC.

        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("t", {"id": np.arange(6), "x": np.zeros((6, 2))})
        ...     client.get("t", columns=["id"], rows=(2, 5))
        {'id': array([2, 3, 4])}
        """
        if columns is not None:
            columns = _names("columns", columns)
        form, arrays = self._native.get(name, columns=columns, rows=_rows(rows), timeout=timeout)
        if form == "array":
            return next(iter(arrays.values()))
        return arrays

    def stream(
        self,
        name: str,
        *,
        columns: Sequence[str] | None = None,
        rows: tuple[int, int] | None = None,
        batch_rows: int | None = None,
        timeout: float | None = None,
    ) -> ItemStream:
        """The item stored under ``name`` as an iterator of batches of its rows (an
        :class:`ItemStream`), for items larger than memory: each batch is what :meth:`get`
        of its rows would return, and a few are fetched ahead while you work on one.

        ``batch_rows`` sets the rows per batch (default: about 8 MiB each, one Flight
        message); ``rows`` and ``columns`` as in :meth:`get`; ``timeout`` bounds each batch.
        The stream reads one version: if a put replaces the item while you iterate, the next
        batch raises :class:`ItemReplacedError` rather than giving rows of the new version.
        When a ``next()`` times out, the batch's fetch goes on and the next ``next()`` waits
        for it again; closing the stream cancels what is under way. Sharded cluster items
        stream shard by shard, in row order. Streams go over gRPC, not shared memory.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(10))
        ...     [batch.tolist() for batch in client.stream("x", batch_rows=4)]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        """
        if columns is not None:
            columns = _names("columns", columns)
        if batch_rows is not None and (
            not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1
        ):
            raise ShapeError(f"stream {name!r}: batch_rows must be an int >= 1, got {batch_rows!r}")
        native = self._native.stream(
            name, columns=columns, rows=_rows(rows), batch_rows=batch_rows, timeout=timeout
        )
        return ItemStream(native, native.form)

    def list(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every stored item: name, rows, bytes, schema, columns (dtype, shape) and the number
        of endpoints it is offered as, sorted by name.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("b", np.arange(4))
        ...     client.put("a", np.zeros((2, 3)))
        ...     [(item["name"], item["rows"]) for item in client.list()]
        [('a', 2), ('b', 4)]
        """
        return [_describe(info) for info in self._native.list(timeout=timeout)]

    def info(self, name: str, *, timeout: float | None = None) -> dict[str, Any]:
        """What is stored under ``name``.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.zeros((2, 3)))
        ...     client.info("x")["columns"]
        [{'arrow_type': 'FixedSizeList(3 x Float64)', 'dtype': 'float64', 'name': 'data',
          'shape': [2, 3]}]
        """
        return _describe(self._native.info(name, timeout=timeout))

    def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes ``name`` from the server. Gets already under way finish with the version
        they were reading.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(3))
        ...     client.delete("x")
        ...     client.list()
        []
        """
        self._native.delete(name, timeout=timeout)

    def kernels(self, *, timeout: float | None = None) -> dict[str, str]:
        """The server's kernels: name -> signature.

        >>> import arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.kernels()["sum"]
        'sum(x: numeric[...], axis: int | None = None) -> numeric[...]'
        """
        return self._native.kernels(timeout=timeout)

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's status and the number of items it stores.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(3))
        ...     client.health()
        {'status': 'ok', 'stored': 1}
        """
        return json.loads(self._native.health(timeout=timeout))

    @staticmethod
    def stored(name: str) -> Stored:
        """A kernel argument naming an array already on the server.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(4.0))
        ...     client.call("add", client.stored("x"), np.ones(4))
        array([1., 2., 3., 4.])
        """
        return Stored(name)

    def call(
        self,
        kernel: str,
        *arrays: Any,
        timeout: float | None = None,
        out: str | None = None,
        **params: Any,
    ) -> Any:
        """Runs ``kernel`` on the server (DoExchange) and returns its result as NumPy.

        Arguments are arrays (sent) or :meth:`stored` names (already on the server); keyword
        arguments are the kernel's parameters, converted exactly as an in-process
        :func:`arrowbridge.call` converts them. One output is returned as an array, several
        as a tuple.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.call("sum", np.arange(6.0).reshape(2, 3), axis=0)
        ...     client.call("identity", np.arange(2), np.zeros(1))
        array([3., 5., 7.])
        (array([0, 1]), array([0.]))

        Ragged data (a list of arrays, or an ``arrow.variable_shape_tensor``) is the first
        argument of a ragged kernel, sent with the call or stored:

        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.call("ragged_sum", [np.ones((2, 3)), np.ones((1, 3))])
        array([6., 3.])

        ``out="name"`` stores the result under ``name`` instead of returning it, batch by
        batch (:meth:`call_stream` into a streamed :meth:`put`): a row-wise kernel on a
        stored item larger than this process's memory works, the result passing through
        the client a batch at a time.

        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(6.0).reshape(3, 2))
        ...     client.call("add", client.stored("x"), np.ones(2), out="y")
        ...     client.get("y")
        array([[1., 2.],
               [3., 4.],
               [5., 6.]])
        """
        if out is not None:
            self.put(out, self.call_stream(kernel, *arrays, timeout=timeout, **params))
            return None
        return self._call(kernel, [_arg(a) for a in arrays], params, timeout)

    def _call(
        self, kernel: str, args: list[tuple[str, Any]], params: Mapping[str, Any], timeout: Any
    ) -> Any:
        result = self._native.call(kernel, args, dict(params), timeout=timeout)
        return result[0] if len(result) == 1 else tuple(result)

    def call_stream(
        self,
        kernel: str,
        source: Any,
        *others: Any,
        batch_rows: int | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> Iterator[Any]:
        """Runs ``kernel`` on ``source`` batch by batch and yields the results as they come:
        memory stays at a few batches on both sides, whatever the size of ``source``.

        ``source`` is either :meth:`stored` (name) of an item on the server, which the
        kernel reads there (views of ``batch_rows`` rows at a time, by default about 8 MiB
        of them, all of the one version stored when the call begins), or a stream of arrays
        as :meth:`put` takes it (a generator, ``iter_ipc``'s batches, ...), each sent with
        its call. ``others`` go (or are named) whole with every batch; ``timeout`` bounds
        each batch's call.

        The kernel must say how it splits over rows (:meth:`kernels`' ``describe_kernels``):
        a row-wise kernel yields one result per batch, with that batch's rows; a reduction
        over the rows (``sum`` without ``axis``, or over axis 0) yields one result, its
        partials combined batch by batch. Any other kernel raises
        :class:`NotDistributableError`.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(10.0).reshape(5, 2))
        ...     x = client.stored("x")
        ...     [len(b) for b in client.call_stream("normalize", x, batch_rows=2)]
        ...     list(client.call_stream("sum", x, batch_rows=2, axis=0))
        ...     [len(b) for b in client.call_stream("identity", (np.zeros(3) for _ in range(2)))]
        [2, 2, 1]
        [array([20., 25.])]
        [3, 3]
        """
        rest = [_arg(a) for a in others]
        _check_batch_rows(batch_rows)
        if isinstance(source, Stored):
            with _as_part_of(f"call_stream {kernel!r} on {source.name!r}"):
                info = self._native.info(source.name, timeout=timeout)
            ndim, calls = _rank(info), _stored_calls(source.name, info, batch_rows, rest)
        else:
            arrays = _batch_arrays(kernel, _stream_source(kernel, source))
            first = next(arrays, None)
            ndim = np.ndim(first) if first is not None else 1
            everything = _chain(first, arrays) if first is not None else iter(())
            calls = _sent_calls(everything, rest)
        with _as_part_of(f"call_stream {kernel!r}"):
            described = self._described(timeout)
        results = _Results(kernel, described, ndim, params)

        def run() -> Iterator[Any]:
            for rows, of, args in calls:
                yield from results.add(rows, of, self._call(kernel, args, params, timeout))
            yield from results.end()

        return run()

    def _described(self, timeout: Any) -> dict[str, Any]:
        """The server's ``describe_kernels``, asked once."""
        described = getattr(self, "_kernel_descriptions", None)
        if described is None:
            body = self._native.action("describe_kernels", b"", timeout=timeout)
            described = self._kernel_descriptions = json.loads(body)
        return described

    def close(self) -> None:
        """Closes the connection (what leaving a ``with`` block does); idempotent. Calls on a
        closed client raise :class:`FlightCallError`, and so do the calls and streams other
        threads have under way on it: they stop at once ("... the client was closed").

        >>> import arrowbridge
        >>> with arrowbridge.serve() as server:
        ...     client = arrowbridge.connect(server.location)
        ...     client.health()["status"]
        ...     client.close()
        'ok'
        """
        self._closed = True
        self._native.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrowbridge.Client {self.location}>"


def connect(
    location: str,
    *,
    token: str | None = None,
    tls_root_certs: bytes | None = None,
    shm: bool | None = None,
    timeout: float | None = None,
    trusted: Sequence[str] = (),
) -> Client:
    """A client of the Flight server at ``location``: ``grpc://host:port``,
    ``grpc+tls://host:port`` or ``grpc+unix:///path/to/socket``. The connection is made on
    first use; a server that cannot be reached raises :class:`ServerUnavailableError` there.

    ``token`` is sent as ``authorization: Bearer <token>``; ``tls_root_certs`` (PEM) verify a
    ``grpc+tls://`` server.

    ``shm``: with a server on this host, run by the same user, ``put`` and ``get`` go through
    sealed shared memory (a get is O(1) whatever the size, a put one copy); calls and other
    servers use gRPC. ``None`` (the default) uses shared memory where the server offers it
    and it can be reached, for what it makes faster: gets of items over 256 KiB (smaller
    ones come sooner in one gRPC round trip) and puts of 4 MiB or more where the kernel
    gives shared memory huge pages (see the Flight guide); ``False`` never, ``True`` always
    (``ServerUnavailableError`` where it cannot be used).

    ``timeout`` (seconds) bounds every call that does not set its own; ``None`` waits as
    long as the server takes (Ctrl+C still stops it).

    ``trusted``: other locations the token may be sent to when an item's endpoints point
    there (the other servers of a cluster). The token never follows a server's FlightInfo to
    anywhere else: such endpoints are read without it.

    >>> import arrowbridge
    >>> with arrowbridge.serve(token="s3cret") as server:
    ...     with arrowbridge.connect(server.location, token="s3cret") as client:
    ...         client.health()
    {'status': 'ok', 'stored': 0}
    """
    return Client(
        location,
        token=token,
        tls_root_certs=tls_root_certs,
        shm=shm,
        timeout=timeout,
        trusted=trusted,
    )


#: Every open client of this process (blocking or asyncio), reconnected in a forked child.
_LIVE: weakref.WeakSet[_Connected] = weakref.WeakSet()


def _reconnect_in_child() -> None:
    for client in list(_LIVE):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_reconnect_in_child)


__all__ = ["Client", "Stored", "connect"]
