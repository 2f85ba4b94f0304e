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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import _native
from ..errors import ShapeError
from ..ipc import _array_like


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


def _batches(data: Any) -> Iterator[tuple[str, list[str], list[Any]]]:
    """The batches of a streamed put, each as (form, names, columns)."""
    if not isinstance(data, Iterator) and hasattr(data, "__arrow_c_stream__"):
        data = pa.RecordBatchReader.from_stream(data)
    for batch in data:
        yield _columns(batch)


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
        self.rows: int = native.rows

    def __iter__(self) -> ItemStream:
        return self

    def __next__(self) -> Any:
        arrays = next(self._native)
        if self._form == "array":
            return next(iter(arrays.values()))
        return arrays

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

    def call(self, kernel: str, *arrays: Any, timeout: float | None = None, **params: Any) -> Any:
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
        """
        args = [
            ("stored", a.name) if isinstance(a, Stored) else ("array", _array_like(a))
            for a in arrays
        ]
        result = self._native.call(kernel, args, params, timeout=timeout)
        return result[0] if len(result) == 1 else tuple(result)

    def close(self) -> None:
        """Closes the connection (what leaving a ``with`` block does); idempotent. Calls on a
        closed client raise :class:`FlightCallError`.

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
    and it can be reached, ``False`` never, ``True`` always (``ServerUnavailableError`` where
    it cannot be used).

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
