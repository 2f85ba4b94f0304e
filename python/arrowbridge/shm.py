"""Named shared memory holding Arrow IPC data, for handing large arrays to other processes.

The owner writes a segment under ``/dev/shm`` (a RAM-backed file system); any other process —
Python through :func:`attach`, Rust through ``arrowbridge::ipc::read_ipc`` on
:attr:`SharedArrays.path` — maps it and reads the arrays as zero-copy views. The owner removes
the segment when it calls :meth:`SharedArrays.unlink`, leaves its ``with`` block, or exits
normally; views that other processes hold stay valid until they drop them. Segments are
readable by their owner's user only (mode 0600), like :mod:`multiprocessing.shared_memory`.

The owner removes only the segment it created: not one that another process has since put in
its place (``replace=True``), and never from a forked child, whose exit would otherwise take
the parent's segment with it.

>>> import numpy as np, arrowbridge
>>> with arrowbridge.shm.create("doctest-demo", {"x": np.arange(6.0)}, replace=True) as seg:
...     other = arrowbridge.shm.attach("doctest-demo")
...     other.read()["x"].sum()
np.float64(15.0)
"""

from __future__ import annotations

import os
import re
import secrets
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FileError
from .ipc import read_ipc as _read_ipc
from .ipc import write_ipc

SHM_DIR = Path("/dev/shm")
PREFIX = "arrowbridge."
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def segment_path(name: str) -> Path:
    """The file that backs the segment called ``name``.

    >>> import arrowbridge
    >>> arrowbridge.shm.segment_path("features")
    PosixPath('/dev/shm/arrowbridge.features')
    """
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not _NAME.fullmatch(name):
        raise ValueError(f"segment name {name!r}: use 1-200 letters, digits, '_', '.' or '-'")
    return SHM_DIR / f"{PREFIX}{name}"


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _remove_own(path: Path, identity: tuple[int, int], creator_pid: int) -> None:
    """Removes ``path`` if this is the creating process and the file is still the one it made."""
    if os.getpid() != creator_pid:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    # A replacement that lands between this check and the unlink is still removed; POSIX has
    # no "unlink if this inode", and the window is a few system calls wide.
    if (st.st_dev, st.st_ino) == identity:
        _remove(path)


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

    def __init__(self, name: str, *, owner: bool, _identity: tuple[int, int] | None = None):
        self.name = name
        self.path = segment_path(name)
        self.owner = owner
        self._finalizer = None
        if owner:
            if _identity is None:
                st = self.path.stat()
                _identity = (st.st_dev, st.st_ino)
            self._finalizer = weakref.finalize(self, _remove_own, self.path, _identity, os.getpid())

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

        Only the process that created the segment removes it, and only while it is still the
        segment that process created (see the module docstring); otherwise this does nothing.
        :func:`arrowbridge.shm.unlink` removes a segment by name, whoever created it.

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
    of that name that exists already (another process may own it) is a :class:`FileError`,
    even when several processes create the name at once: exactly one of them succeeds.
    ``replace=True`` replaces it (atomically: readers see the old or the new data); its
    previous owner then leaves the new segment alone.

    >>> import numpy as np, arrowbridge, os
    >>> seg = arrowbridge.shm.create(f"doctest-create-{os.getpid()}", {"x": np.ones(3)})
    >>> seg.owner, seg.path.exists()
    (True, True)
    >>> seg.unlink()
    """
    path = segment_path(name)
    if not SHM_DIR.is_dir():
        raise FileError(f"{SHM_DIR}: no shared-memory file system on this machine")
    # The data is written to a private file first and only then given the segment's name, in
    # one step (link or rename): checking for the name and then writing it would let two
    # creators both "succeed". The name is cut short so that write_ipc's own temporary file
    # next to it stays within the 255-byte file-name limit.
    tmp = SHM_DIR / f".{PREFIX}{name[:64]}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    # Created 0600 before any data goes in: write_ipc keeps the mode of the file it replaces,
    # so other users never read the data; the chmod covers a write_ipc that does not.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        write_ipc(tmp, data, format=format)  # type: ignore[arg-type]
        os.chmod(tmp, 0o600)
        st = tmp.stat()
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileError(
                    f"{path}: a segment called {name!r} exists already; pass replace=True to "
                    f"replace it, or remove it with arrowbridge.shm.unlink({name!r})"
                ) from None
    finally:
        _remove(tmp)
    return SharedArrays(name, owner=True, _identity=(st.st_dev, st.st_ino))


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
    """Removes the segment called ``name`` if it exists, whichever process created it.

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
