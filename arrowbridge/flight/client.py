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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import _native
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


def _describe(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": info["name"],
        "rows": info["rows"],
        "bytes": info["bytes"],
        "schema": pa.ipc.read_schema(pa.py_buffer(info["schema_ipc"])),
        "columns": json.loads(info["columns"]),
        "endpoints": info["endpoints"],
    }


class Client:
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
    reconnects on its first call.

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
        self.location = location
        self._options: dict[str, Any] = {
            "token": token,
            "tls_root_certs": tls_root_certs,
            "shm": shm,
            "timeout": timeout,
            "trusted": list(trusted),
        }
        self._native = _native.FlightClient(location, **self._options)
        self._closed = False
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        # The connection's runtime threads exist in the parent only: the child neither uses
        # nor drops it, and connects again.
        self._native.abandon()
        if not self._closed:
            self._native = _native.FlightClient(self.location, **self._options)

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
        """
        form, names, arrays = _columns(data)
        self._native.put(name, names, arrays, form, timeout=timeout)

    def get(self, name: str, *, timeout: float | None = None) -> Any:
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
        """
        form, arrays = self._native.get(name, timeout=timeout)
        if form == "array":
            return next(iter(arrays.values()))
        return arrays

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


#: Every open client of this process, reconnected in a forked child.
_LIVE: weakref.WeakSet[Client] = weakref.WeakSet()


def _reconnect_in_child() -> None:
    for client in list(_LIVE):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_reconnect_in_child)


__all__ = ["Client", "Stored", "connect"]
