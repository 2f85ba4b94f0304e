"""Arrow Flight: a Rust server that stores arrays and runs kernels (:mod:`.server`), and a
native client that speaks NumPy (:mod:`.client`). The errors of Flight calls live in
:mod:`arrowbridge.errors`.

>>> import numpy as np, arrowbridge
>>> with arrowbridge.serve() as server:
...     client = arrowbridge.connect(server.location)
...     client.put("x", np.arange(6.0).reshape(2, 3))
...     client.call("sum", client.stored("x"), axis=1).tolist()
[3.0, 12.0]
"""

from ..errors import (
    AuthenticationError,
    FlightCallError,
    FlightTimeoutError,
    ItemReplacedError,
    RemoteInvalidError,
    RemoteNotFoundError,
    RemoteOutOfMemoryError,
    RemoteStorageError,
    ServerUnavailableError,
)
from .client import Client, ItemStream, Stored, connect
from .server import Server, serve

__all__ = [
    "AuthenticationError",
    "Client",
    "FlightCallError",
    "FlightTimeoutError",
    "ItemReplacedError",
    "ItemStream",
    "RemoteInvalidError",
    "RemoteNotFoundError",
    "RemoteOutOfMemoryError",
    "RemoteStorageError",
    "Server",
    "ServerUnavailableError",
    "Stored",
    "connect",
    "serve",
]
