"""Arrow Flight: a Rust server that stores arrays and runs kernels, and a NumPy client.

>>> import numpy as np, arrowbridge
>>> with arrowbridge.serve() as server:
...     client = arrowbridge.connect(server.location)
...     client.put("x", np.arange(6.0).reshape(2, 3))
...     client.call("sum", client.stored("x"), axis=1).tolist()
[3.0, 12.0]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from . import _native
from .errors import ArrowBridgeError, KernelParameterError
from .ipc import _array_like

#: Largest chunk of a put or call the client sends in one message; tensors are split by rows.
CHUNK_BYTES = 8 << 20


class FlightCallError(ArrowBridgeError, RuntimeError):
    """A Flight call failed; the message is the server's."""


class AuthenticationError(FlightCallError, PermissionError):
    """The server wants a (different) bearer token."""


class RemoteNotFoundError(FlightCallError, LookupError):
    """The server has no array (or kernel) of that name."""


class RemoteInvalidError(FlightCallError, ValueError):
    """The server rejected the request: wrong dtype, shape, parameter or data."""


class ServerUnavailableError(FlightCallError, ConnectionError):
    """The server cannot be reached."""


class RemoteOutOfMemoryError(FlightCallError, MemoryError):
    """The server cannot allocate what the call needs (gRPC ``RESOURCE_EXHAUSTED``): a
    kernel's result, or a buffer the request declares, is larger than its memory. The
    server keeps serving."""


class RemoteStorageError(FlightCallError, OSError):
    """The server could not write its data directory: the disk is full (gRPC
    ``RESOURCE_EXHAUSTED``) or the directory is read-only (``FAILED_PRECONDITION``). Nothing
    was stored or deleted; the message names the file."""


# How pyarrow words the gRPC codes of storage and memory failures.
_EXHAUSTED = "gRPC returned resource exhausted"
_STORAGE_CODES = (_EXHAUSTED, "gRPC returned precondition failed")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except flight.FlightUnauthenticatedError as e:
        raise AuthenticationError(str(e)) from e
    except flight.FlightUnavailableError as e:
        raise ServerUnavailableError(str(e)) from e
    except pa.ArrowKeyError as e:
        raise RemoteNotFoundError(str(e)) from e
    except pa.ArrowInvalid as e:
        if str(e) == "FlightClient is closed":  # pyarrow's words: nothing reached a server
            raise FlightCallError(
                "the client is closed (by close() or its with block); connect() again"
            ) from e
        storage = str(e).startswith(_STORAGE_CODES) and "data directory" in str(e)
        if storage:
            raise RemoteStorageError(str(e)) from e
        if str(e).startswith(_EXHAUSTED):
            raise RemoteOutOfMemoryError(str(e)) from e
        raise RemoteInvalidError(str(e)) from e
    except flight.FlightServerError as e:
        raise RemoteInvalidError(str(e)) from e
    except flight.FlightError as e:
        raise FlightCallError(str(e)) from e


class Server:
    """A running arrowbridge Flight server (see :func:`serve`).

    >>> import arrowbridge
    >>> server = arrowbridge.serve()
    >>> server
    <arrowbridge.Server grpc://127.0.0.1:... running>
    >>> server.shutdown()
    >>> server
    <arrowbridge.Server grpc://127.0.0.1:... stopped>
    """

    def __init__(self, native: _native.FlightServer):
        self._native = native

    @property
    def location(self) -> str:
        """``grpc://host:port``: what clients connect to.

        >>> import arrowbridge
        >>> with arrowbridge.serve("grpc://127.0.0.1:0") as server:
        ...     server.location
        'grpc://127.0.0.1:...'
        """
        return self._native.location

    @property
    def running(self) -> bool:
        """Whether the server is serving (until :meth:`shutdown`).

        >>> import arrowbridge
        >>> with arrowbridge.serve() as server:
        ...     server.running
        True
        >>> server.running
        False
        """
        return self._native.running

    def shutdown(self) -> None:
        """Stops the server after the calls under way; idempotent.

        >>> import arrowbridge
        >>> server = arrowbridge.serve()
        >>> server.shutdown()
        >>> server.shutdown()
        >>> server.running
        False
        """
        self._native.shutdown()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<arrowbridge.Server {self.location} {'running' if self.running else 'stopped'}>"


def serve(
    location: str = "grpc://127.0.0.1:0",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
    kernels: Sequence[str | os.PathLike[str]] = (),
) -> Server:
    """Starts the Rust Flight server on background threads of this process.

    ``location`` is ``grpc://host:port`` (port 0 picks a free one; see :attr:`Server.location`).
    Without ``data_dir`` arrays live in memory. With it, every acknowledged put is first
    written to ``data_dir/<name>.arrow`` (atomically, fsynced) and the directory's arrays are
    served again after a restart. ``token`` requires ``authorization: Bearer <token>`` on every
    call; ``tls=(cert_pem, key_pem)`` serves over TLS (``grpc+tls://``).

    The server runs the built-in kernels and those of every plugin loaded in this process when
    it starts (:func:`arrowbridge.load_kernels`), including the plugins named in ``kernels``,
    which are loaded first; plugins loaded later are not seen by a running server.

    >>> import numpy as np, arrowbridge
    >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
    ...     client.put("x", np.arange(4.0))
    ...     client.call("sum", client.stored("x"))
    array(6.)
    """
    url = urlparse(location)
    if url.scheme not in ("grpc", "grpc+tcp", "grpc+tls") or (
        url.port is None and url.hostname is None
    ):
        raise ValueError(f"location {location!r}: expected grpc://host:port")
    for plugin in kernels:
        _native.load_kernels(plugin)
    native = _native.FlightServer(
        url.hostname or "127.0.0.1",
        url.port or 0,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        token=token,
        tls_cert=None if tls is None else tls[0],
        tls_key=None if tls is None else tls[1],
    )
    return Server(native)


@dataclass(frozen=True)
class Stored:
    """A kernel argument that names an array already on the server (not sent again).

    >>> import arrowbridge
    >>> arrowbridge.Client.stored("x")
    Stored(name='x')
    """

    name: str


def _wire_batches(arrays: Mapping[str, Any], chunk_bytes: int) -> list[pa.RecordBatch]:
    """The batches that carry ``arrays`` in messages of at most ``chunk_bytes``: slices of
    rows, or, when arrays differ in their first axis or one row is larger than a message,
    every array laid out flat (its shape in the field metadata, restored on receipt)."""
    names = list(arrays)
    values = [_array_like(v) for v in arrays.values()]
    return [
        pa.RecordBatch._import_from_c_capsule(schema, array)
        for schema, array in _native.wire_capsules(names, values, chunk_bytes)
    ]


def _param(kernel: str, name: str, value: Any) -> Any:
    """A kernel parameter in the JSON form the server reads (``Params::from_json``): NumPy
    scalars as the Python numbers they hold, NaN and infinities (which JSON lacks) as
    ``{"float": "nan" | "inf" | "-inf"}``. Ints must fit in 64 bits, as in process: JSON
    would carry a larger one, but the server would read it as a float."""
    if isinstance(value, np.generic | np.ndarray) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise KernelParameterError(
            f"kernel {json.dumps(kernel)}: parameter {json.dumps(name)}: {value} does not fit "
            "in a 64-bit signed integer"
        )
    if isinstance(value, list | tuple):
        return [_param(kernel, name, v) for v in value]
    return value


def _chunks(batch: pa.RecordBatch, chunk_bytes: int) -> Iterator[pa.RecordBatch]:
    rows = batch.num_rows
    row_bytes = max(1, batch.nbytes // max(rows, 1))
    step = max(1, chunk_bytes // row_bytes)
    if rows == 0:
        yield batch
    for start in range(0, rows, step):
        yield batch.slice(start, step)


class Client:
    """A Flight client speaking NumPy (see :func:`connect`). Works against any Flight server
    for put/get/list/info; ``call`` needs an arrowbridge server.

    >>> import numpy as np, arrowbridge
    >>> with arrowbridge.serve() as server, arrowbridge.Client(server.location) as client:
    ...     client.put("x", np.arange(3))
    ...     client.get("x")
    {'data': array([0, 1, 2])}
    """

    def __init__(
        self, location: str, *, token: str | None = None, tls_root_certs: bytes | None = None
    ):
        kwargs = {} if tls_root_certs is None else {"tls_root_certs": tls_root_certs}
        self.location = location
        self._client = flight.FlightClient(location, **kwargs)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._options = flight.FlightCallOptions(headers=headers)

    def put(self, name: str, data: Any, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        """Stores ``data`` under ``name``: a NumPy array, a dict of arrays (rows of one table when
        they share axis 0), or a pyarrow Table/RecordBatch. Large data is sent in chunks of rows.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("pair", {"id": np.arange(2), "vec": np.ones((2, 3), np.float32)})
        ...     client.info("pair")["rows"]
        2
        """
        if isinstance(data, np.ndarray):
            data = {"data": data}
        if isinstance(data, Mapping):
            chunks = _wire_batches(data, chunk_bytes)
        else:
            batches = list(data.to_batches()) if hasattr(data, "to_batches") else [data]
            chunks = [c for batch in batches for c in _chunks(batch, chunk_bytes)]
        # A table may have no batches at all; its schema still describes the (empty) item.
        schema = chunks[0].schema if chunks else data.schema
        with _translated():
            writer, reader = self._client.do_put(
                flight.FlightDescriptor.for_path(name), schema, self._options
            )
            with writer:
                for chunk in chunks:
                    writer.write_batch(chunk)
                writer.done_writing()
                reader.read()

    def get(self, name: str) -> dict[str, np.ndarray]:
        """The arrays stored under ``name``; read-only views of the received buffers where they
        are aligned and in one piece (several chunks are concatenated).

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("m", np.eye(2))
        ...     m = client.get("m")["data"]
        ...     m, m.flags.writeable
        (array([[1., 0.],
               [0., 1.]]), False)
        """
        with _translated():
            table = self._client.do_get(flight.Ticket(name.encode()), self._options).read_all()
        return _native.stream_to_arrays(table)

    def list(self) -> list[dict[str, Any]]:
        """Every stored item: name, rows, bytes and columns (dtype, shape), sorted by name.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("b", np.arange(4))
        ...     client.put("a", np.zeros((2, 3)))
        ...     [(item["name"], item["rows"]) for item in client.list()]
        [('a', 2), ('b', 4)]
        """
        with _translated():
            return [
                self._describe(info) for info in self._client.list_flights(options=self._options)
            ]

    def info(self, name: str) -> dict[str, Any]:
        """What is stored under ``name``.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.zeros((2, 3)))
        ...     client.info("x")["columns"]
        [{'arrow_type': 'FixedSizeList(3 x Float64)', 'dtype': 'float64', 'name': 'data',
          'shape': [2, 3]}]
        """
        with _translated():
            info = self._client.get_flight_info(
                flight.FlightDescriptor.for_path(name), self._options
            )
        return self._describe(info)

    @staticmethod
    def _describe(info: flight.FlightInfo) -> dict[str, Any]:
        meta = json.loads(info.app_metadata or b"{}")
        return {
            "name": info.descriptor.path[0].decode(),
            "rows": info.total_records,
            "bytes": info.total_bytes,
            "schema": info.schema,
            "columns": meta.get("columns", []),
        }

    def delete(self, name: str) -> None:
        """Deletes ``name`` from the server.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(3))
        ...     client.delete("x")
        ...     client.list()
        []
        """
        self._action("delete", name.encode())

    def kernels(self) -> dict[str, str]:
        """The server's kernels: name -> signature.

        >>> import arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.kernels()["sum"]
        'sum(x: numeric[...], axis: int | None = None) -> numeric[...]'
        """
        return json.loads(self._action("list_kernels"))

    def health(self) -> dict[str, Any]:
        """The server's status and the number of items it stores.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.put("x", np.arange(3))
        ...     client.health()
        {'status': 'ok', 'stored': 1}
        """
        return json.loads(self._action("health"))

    def _action(self, kind: str, body: bytes = b"") -> bytes:
        with _translated():
            results = list(self._client.do_action(flight.Action(kind, body), self._options))
        return results[0].body.to_pybytes() if results else b""

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

    def call(self, kernel: str, *arrays: Any, chunk_bytes: int = CHUNK_BYTES, **params: Any) -> Any:
        """Runs ``kernel`` on the server (DoExchange) and returns its result as NumPy.

        Arguments are NumPy arrays (sent) or :meth:`stored` names (already on the server);
        keyword arguments are the kernel's parameters. One output is returned as an array,
        several as a tuple.

        >>> import numpy as np, arrowbridge
        >>> with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        ...     client.call("sum", np.arange(6.0).reshape(2, 3), axis=0)
        ...     client.call("identity", np.arange(2), np.zeros(1))
        array([3., 5., 7.])
        (array([0, 1]), array([0.]))
        """
        args, sent = [], {}
        for i, a in enumerate(arrays):
            if isinstance(a, Stored):
                args.append({"stored": a.name})
            else:
                args.append({"column": f"arg{i}"})
                sent[f"arg{i}"] = a
        encoded = {k: _param(kernel, k, v) for k, v in params.items()}
        command = json.dumps(
            {"kernel": kernel, "args": args, "params": encoded}, allow_nan=False
        ).encode()
        chunks = _wire_batches(sent, chunk_bytes) if sent else []
        schema = chunks[0].schema if chunks else pa.schema([])
        with _translated():
            writer, reader = self._client.do_exchange(
                flight.FlightDescriptor.for_command(command), self._options
            )
            with writer:
                writer.begin(schema)
                for chunk in chunks:
                    writer.write_batch(chunk)
                writer.done_writing()
                table = reader.read_all()
        result = list(_native.stream_to_arrays(table).values())
        return result[0] if len(result) == 1 else tuple(result)

    def close(self) -> None:
        """Closes the connection (what leaving a ``with`` block does); idempotent.

        >>> import arrowbridge
        >>> with arrowbridge.serve() as server:
        ...     client = arrowbridge.connect(server.location)
        ...     client.health()["status"]
        ...     client.close()
        'ok'
        """
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    location: str, *, token: str | None = None, tls_root_certs: bytes | None = None
) -> Client:
    """A client of the Flight server at ``location`` (``grpc://host:port``).

    ``token`` is sent as ``authorization: Bearer <token>``; ``tls_root_certs`` (PEM) verify a
    ``grpc+tls://`` server.

    >>> import arrowbridge
    >>> with arrowbridge.serve(token="s3cret") as server:
    ...     with arrowbridge.connect(server.location, token="s3cret") as client:
    ...         client.health()
    {'status': 'ok', 'stored': 0}
    """
    return Client(location, token=token, tls_root_certs=tls_root_certs)
