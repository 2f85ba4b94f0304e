"""The exceptions arrowbridge raises.

Every error derives from :class:`ArrowBridgeError`; each subclass also derives from the
built-in exception a Python user would expect (``ValueError``, ``TypeError``, …), so existing
``except`` clauses keep working. Messages name the field, dtype, offset or kernel involved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ArrowBridgeError(Exception):
    """Base class of every arrowbridge error."""


class NullValuesError(ArrowBridgeError, ValueError):
    """The Arrow data has null values, which a NumPy array cannot hold."""


class MisalignedBufferError(ArrowBridgeError, ValueError):
    """A data buffer's address is not a multiple of its element's alignment."""


class ByteOrderError(ArrowBridgeError, ValueError):
    """The array is not in this machine's byte order."""


class UnsupportedTypeError(ArrowBridgeError, TypeError):
    """A dtype, Arrow type or Python object that arrowbridge does not carry."""


class DTypeMismatchError(ArrowBridgeError, TypeError):
    """A kernel received an argument of the wrong dtype."""


class ShapeError(ArrowBridgeError, ValueError):
    """A wrong rank, or shapes that do not fit together."""


class UnknownKernelError(ArrowBridgeError, LookupError):
    """No kernel of that name is registered."""


class KernelParameterError(ArrowBridgeError, TypeError):
    """A kernel keyword parameter is unknown or of the wrong type."""


class CopyRequiredError(ArrowBridgeError, ValueError):
    """``copy=False`` was given, but the layout needs a copy."""


class InvalidArrowDataError(ArrowBridgeError, ValueError):
    """Arrow data or metadata that does not describe a valid array."""


class KernelError(ArrowBridgeError, RuntimeError):
    """A kernel failed, or panicked."""


class FileError(ArrowBridgeError, OSError):
    """A file could not be opened, read or written (the message names it)."""


class InvalidFileError(ArrowBridgeError, ValueError):
    """A file that is not valid Arrow IPC data: truncated, corrupt, or pointing outside itself."""


class OutOfMemoryError(ArrowBridgeError, MemoryError):
    """A result or buffer too large for the memory this process may allocate (NumPy raises
    ``MemoryError`` in the same place); the message names the size and the limit."""


class UnsupportedDeviceError(ArrowBridgeError, BufferError):
    """An array whose memory the CPU cannot read (a GPU tensor handed over through DLPack);
    the message names the device, e.g. ``cuda:0``. Move it to the CPU first."""


class ReadOnlyError(ArrowBridgeError, ValueError):
    """A mutable view was asked of memory that is read-only (a read-only NumPy array, or any
    non-NumPy producer: their memory is lent for reading)."""


class AlreadyBorrowedError(ArrowBridgeError, ValueError):
    """A Rust extension asked for a view of memory that another of its arguments already
    borrows mutably (or, for a mutable view, borrows at all): the views would alias."""


class ServerStartError(ArrowBridgeError, OSError):
    """A Flight server could not start: its address is taken or cannot be used (``errno``
    says why, e.g. ``errno.EADDRINUSE``)."""


class TLSConfigError(ArrowBridgeError, ValueError):
    """The TLS certificate or key given to a Flight server cannot be used."""


class PluginError(ArrowBridgeError, ImportError):
    """A kernel plugin could not be loaded (the message names the library and the reason)."""


class InvalidLocationError(ArrowBridgeError, ValueError):
    """A Flight location that cannot be used: an unknown scheme, a missing host or path."""


class FlightCallError(ArrowBridgeError, RuntimeError):
    """A Flight call failed; the message is the server's. The subclasses below are chosen by
    the call's gRPC status code (and, where one code has two causes, by the error kind the
    arrowbridge server attaches), never by the message's text."""


class AuthenticationError(FlightCallError, PermissionError):
    """The server wants a (different) bearer token (``UNAUTHENTICATED``,
    ``PERMISSION_DENIED``)."""


class RemoteNotFoundError(FlightCallError, LookupError):
    """The server has no array (or kernel) of that name (``NOT_FOUND``)."""


class RemoteInvalidError(FlightCallError, ValueError):
    """The server rejected the request: wrong dtype, shape, parameter or data
    (``INVALID_ARGUMENT``, ``OUT_OF_RANGE``, ``FAILED_PRECONDITION``)."""


class ServerUnavailableError(FlightCallError, ConnectionError):
    """The server cannot be reached (``UNAVAILABLE``)."""


class RemoteOutOfMemoryError(FlightCallError, MemoryError):
    """The server cannot allocate what the call needs (``RESOURCE_EXHAUSTED``, kind
    ``out-of-memory``): a kernel's result, or a buffer the request declares, is larger than
    its memory. The server keeps serving."""


class RemoteStorageError(FlightCallError, OSError):
    """The server could not write its data directory (kind ``storage``): the disk is full
    (``RESOURCE_EXHAUSTED``) or the directory is read-only (``FAILED_PRECONDITION``). Nothing
    was stored or deleted; the message names the file."""


class FlightTimeoutError(FlightCallError, TimeoutError):
    """A Flight call did not finish within its ``timeout`` (of the call, or of
    :func:`arrowbridge.connect`); it was cancelled, and the client stays usable. The message
    names the call and the time limit."""


class ItemReplacedError(FlightCallError, LookupError):
    """The version of an item a ticket names was replaced by a put (or deleted) and no reader
    holds it any more (``FAILED_PRECONDITION``, kind ``replaced``). Ask for the item's
    FlightInfo again to read the version stored now; arrowbridge's own client does so by
    itself, so only plain Flight clients that follow endpoints see this. A server also says
    so of a sharded item's map older than the one it holds (a newer put of the name won
    there), which the cluster client takes in its stride."""


class NotDistributableError(ArrowBridgeError, ValueError):
    """A cluster call asked a kernel to run on a sharded item, but the kernel does not say
    how its results on the shards combine (its distribution is ``local``). Pass
    ``gather=True`` to fetch the item to one server first."""


class InvalidNameError(ArrowBridgeError, ValueError):
    """An item name a cluster client refuses: one the servers do not accept (1-200 letters,
    digits, ``_``, ``-`` or ``.``, not starting with ``.``), one that leaves no room for its
    shards' names, or one reserved for shards (it contains ``.shard-<i>-of-<n>`` or
    ``.part-<i>``), under which a put or delete would destroy another item's shard. The
    message names the name and says why."""


class InvalidArgumentError(ArrowBridgeError, ValueError):
    """An argument of a call outside the values it takes: a timeout that is negative or NaN,
    say. The message names the argument and the value."""


@contextlib.contextmanager
def _as_part_of(call: str) -> Iterator[None]:
    """Says the Flight errors of the calls made inside as errors of the user's ``call`` (a
    timeout of the ``info`` a ``delete`` begins with is the delete's), keeping their class."""
    try:
        yield
    except FlightCallError as e:
        if e.args and isinstance(e.args[0], str) and not e.args[0].startswith(call):
            e.args = (f"{call}: {e.args[0]}", *e.args[1:])
        raise


__all__ = [
    "ArrowBridgeError",
    "AuthenticationError",
    "ByteOrderError",
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
    "ItemReplacedError",
    "KernelError",
    "KernelParameterError",
    "MisalignedBufferError",
    "NotDistributableError",
    "NullValuesError",
    "OutOfMemoryError",
    "PluginError",
    "RemoteInvalidError",
    "RemoteNotFoundError",
    "RemoteOutOfMemoryError",
    "RemoteStorageError",
    "ServerStartError",
    "ServerUnavailableError",
    "ShapeError",
    "TLSConfigError",
    "UnknownKernelError",
    "UnsupportedTypeError",
]
