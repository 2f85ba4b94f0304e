"""Named shared memory holding Arrow IPC data, for handing large arrays to other processes.

The owner writes a segment under ``/dev/shm`` (a RAM-backed file system); any other process —
Python through :func:`attach`, Rust through ``arrowbridge::ipc::read_ipc`` on
:attr:`SharedArrays.path` — maps it and reads the arrays as zero-copy views. The owner removes
the segment when it calls :meth:`SharedArrays.unlink`, leaves its ``with`` block, or exits
normally; views that other processes hold stay valid until they drop them.

>>> import numpy as np, arrowbridge
>>> with arrowbridge.shm.create("doctest-demo", {"x": np.arange(6.0)}, replace=True) as seg:
...     other = arrowbridge.shm.attach("doctest-demo")
...     other.read()["x"].sum()
np.float64(15.0)
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FileError
from .ipc import read_ipc as _read_ipc
from .ipc import write_ipc

SHM_DIR = Path("/dev/shm")
PREFIX = "arrowbridge."
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def segment_path(name: str) -> Path:
    """The file that backs the segment called ``name``.

    >>> import arrowbridge
    >>> arrowbridge.shm.segment_path("features")
    PosixPath('/dev/shm/arrowbridge.features')
    """
    if not _NAME.match(name):
        raise ValueError(f"segment name {name!r}: use 1-200 letters, digits, '_', '.' or '-'")
    return SHM_DIR / f"{PREFIX}{name}"


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class SharedArrays:
    """A shared-memory segment of Arrow IPC data (see the module docstring).

    >>> import numpy as np, arrowbridge, os
    >>> name = f"doctest-class-{os.getpid()}"
    >>> with arrowbridge.shm.create(name, np.arange(3)) as seg:
    ...     seg
    ...     arrowbridge.shm.attach(name)
    <SharedArrays 'doctest-class-...' at /dev/shm/arrowbridge.doctest-class-... (owner)>
    <SharedArrays 'doctest-class-...' at /dev/shm/arrowbridge.doctest-class-... (attached)>
    """

    def __init__(self, name: str, *, owner: bool):
        self.name = name
        self.path = segment_path(name)
        self.owner = owner
        self._finalizer = weakref.finalize(self, _remove, self.path) if owner else None

    def read(self) -> dict[str, np.ndarray]:
        """The arrays, as read-only views of the shared memory.

        >>> import numpy as np, arrowbridge, os
        >>> with arrowbridge.shm.create(f"doctest-read-{os.getpid()}", np.arange(3)) as seg:
        ...     x = seg.read()["data"]
        ...     x, x.flags.writeable
        (array([0, 1, 2]), False)
        """
        return _read_ipc(self.path, mmap=True)

    def unlink(self) -> None:
        """Removes the segment (owner only); existing views stay valid.

        >>> import numpy as np, arrowbridge, os
        >>> seg = arrowbridge.shm.create(f"doctest-unlink-{os.getpid()}", np.arange(3))
        >>> x = seg.read()["data"]
        >>> seg.unlink()
        >>> seg.path.exists(), x.sum()
        (False, np.int64(3))
        """
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> SharedArrays:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            self.unlink()

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        return f"<SharedArrays {self.name!r} at {self.path} ({role})>"


def create(name: str, data: Any, *, format: str = "file", replace: bool = False) -> SharedArrays:
    """Writes ``data`` (anything :func:`arrowbridge.write_ipc` takes) to a new segment.

    The calling process owns the segment: it is removed when the returned object is unlinked,
    closed as a context manager, garbage-collected or the process exits normally. A segment
    of that name that exists already (another process may own it) is a :class:`FileError`;
    ``replace=True`` replaces it (atomically: readers see the old or the new data).

    >>> import numpy as np, arrowbridge, os
    >>> seg = arrowbridge.shm.create(f"doctest-create-{os.getpid()}", {"x": np.ones(3)})
    >>> seg.owner, seg.path.exists()
    (True, True)
    >>> seg.unlink()
    """
    path = segment_path(name)
    if not SHM_DIR.is_dir():
        raise FileError(f"{SHM_DIR}: no shared-memory file system on this machine")
    if path.exists() and not replace:
        raise FileError(
            f"{path}: a segment called {name!r} exists already; pass replace=True to replace "
            f"it, or remove it with arrowbridge.shm.unlink({name!r})"
        )
    write_ipc(path, data, format=format)  # type: ignore[arg-type]
    return SharedArrays(name, owner=True)


def attach(name: str) -> SharedArrays:
    """Opens an existing segment for reading (without owning it).

    >>> import numpy as np, arrowbridge, os
    >>> name = f"doctest-attach-{os.getpid()}"
    >>> with arrowbridge.shm.create(name, {"x": np.arange(4)}):
    ...     reader = arrowbridge.shm.attach(name)
    ...     reader.owner, reader.read()["x"].tolist()
    (False, [0, 1, 2, 3])
    """
    path = segment_path(name)
    if not path.exists():
        raise FileError(f"{path}: no shared-memory segment called {name!r}")
    return SharedArrays(name, owner=False)


def unlink(name: str) -> None:
    """Removes the segment called ``name`` if it exists.

    >>> import numpy as np, arrowbridge, os
    >>> name = f"doctest-unlink-name-{os.getpid()}"
    >>> seg = arrowbridge.shm.create(name, np.arange(3))
    >>> arrowbridge.shm.unlink(name)
    >>> arrowbridge.shm.unlink(name)
    >>> seg.path.exists()
    False
    """
    _remove(segment_path(name))


def list_segments() -> list[str]:
    """Names of the arrowbridge segments that exist now, sorted.

    >>> import numpy as np, arrowbridge, os
    >>> name = f"doctest-list-{os.getpid()}"
    >>> with arrowbridge.shm.create(name, np.arange(3)):
    ...     name in arrowbridge.shm.list_segments()
    True
    >>> name in arrowbridge.shm.list_segments()
    False
    """
    return sorted(p.name[len(PREFIX) :] for p in SHM_DIR.glob(f"{PREFIX}*"))


__all__ = ["SharedArrays", "attach", "create", "list_segments", "segment_path", "unlink"]
