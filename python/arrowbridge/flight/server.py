"""The arrowbridge Flight server: Rust, on background threads of this process.

>>> import numpy as np, arrowbridge
>>> with arrowbridge.serve() as server:
...     client = arrowbridge.connect(server.location)
...     client.put("x", np.arange(6.0).reshape(2, 3))
...     client.call("sum", client.stored("x"), axis=1).tolist()
[3.0, 12.0]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import urlparse

from .. import _native
from ..errors import InvalidLocationError


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
        """``grpc://host:port`` (or ``grpc+tls://``, ``grpc+unix:///path``): what clients
        connect to.

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
    shm: bool = True,
    max_bytes: int | None = None,
) -> Server:
    """Starts the Rust Flight server on background threads of this process.

    ``location`` is ``grpc://host:port`` (port 0 picks a free one; see :attr:`Server.location`),
    or ``grpc+unix:///path/to/socket`` for clients on this host only: the socket is created
    with mode 0600 (only this user may connect), a stale socket of a stopped server is
    replaced, and the file is removed at shutdown.
    Without ``data_dir`` arrays live in memory. With it, every acknowledged put is first
    written to ``data_dir/<name>.arrow`` (atomically, fsynced) and the directory's arrays are
    served again after a restart. A gRPC put is written to its file as its batches arrive,
    and arrays are served from their files, memory-mapped: the server's own memory holds a
    few messages per put under way, not the items. ``token`` requires
    ``authorization: Bearer <token>`` on every call; ``tls=(cert_pem, key_pem)`` serves over
    TLS (``grpc+tls://``).

    With ``shm`` (the default, on Linux), clients on this host and of this user may put and
    get items as sealed shared memory, through a second socket in ``$TMPDIR/arrowbridge-<uid>/``
    (see the security model in the Flight page of the documentation, docs/flight.md);
    ``shm=False`` offers only gRPC.

    ``max_bytes`` is the server's memory budget: the most bytes its stored items may take
    (gRPC and shared-memory puts alike; a shared-memory put counts at its segment's full
    size; with ``data_dir`` a gRPC put is written to its file as it arrives and counts for
    nothing). A put past it raises :class:`RemoteOutOfMemoryError` and stores
    nothing. The default is three quarters of this machine's memory, or of the cgroup's
    limit where that is lower.

    >>> import numpy as np, arrowbridge
    >>> with arrowbridge.serve(max_bytes=1 << 20) as server:
    ...     client = arrowbridge.connect(server.location)
    ...     client.put("small", np.zeros(1000))
    ...     client.put("big", np.zeros(1 << 20))
    Traceback (most recent call last):
    arrowbridge.errors.RemoteOutOfMemoryError: storing "big" ... budget of 1048576 ...

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
    unix = None
    if url.scheme == "grpc+unix":
        if not url.path or url.netloc:
            raise InvalidLocationError(
                f"location {location!r}: expected grpc+unix:///absolute/path/to/socket"
            )
        unix = url.path
    elif url.scheme not in ("grpc", "grpc+tcp", "grpc+tls") or (
        url.port is None and url.hostname is None
    ):
        raise InvalidLocationError(
            f"location {location!r}: expected grpc://host:port or grpc+unix:///path"
        )
    for plugin in kernels:
        _native.load_kernels(plugin)
    native = _native.FlightServer(
        url.hostname or "127.0.0.1",
        url.port or 0,
        unix=unix,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        token=token,
        tls_cert=None if tls is None else tls[0],
        tls_key=None if tls is None else tls[1],
        shm=shm,
        max_bytes=max_bytes,
    )
    return Server(native)
