"""Typed interface of the compiled extension (crates/arrowbridge-py)."""

import builtins
import os
import pathlib
from typing import Any, final

import numpy as np

__all__ = [
    "ArrowMemory",
    "AtomicWrite",
    "Completions",
    "FlightClient",
    "FlightPut",
    "FlightServer",
    "FlightStream",
    "IpcReader",
    "PendingCall",
    "__version__",
    "call",
    "export_array",
    "export_ragged_list",
    "export_ragged_parts",
    "kernels",
    "load_kernels",
    "ragged_parts",
    "stream_to_arrays",
    "to_numpy",
    "write_arrays",
    "write_stream",
]

__version__: str

def call(kernel: str, /, *arrays: Any, **params: Any) -> Any:
    """Runs a registered Rust kernel; returns one ndarray or a tuple of them."""

def kernels() -> dict[str, str]:
    """Registered kernels: name -> signature."""

def load_kernels(path: str | os.PathLike[str]) -> list[str]:
    """Loads a kernel plugin (shared library); returns its kernels' names."""

def export_array(
    array: np.ndarray,
    *,
    dim_names: list[str] | None = None,
    copy: bool | None = None,
    whole: bool = False,
    name: str = "",
) -> tuple[object, object]:
    """The (schema, array) PyCapsules of an Arrow array viewing `array`."""

def to_numpy(obj: Any, *, copy: bool | None = None) -> np.ndarray | list[np.ndarray]:
    """An ndarray over the Arrow memory; a list of them for an arrow.variable_shape_tensor."""

def export_ragged_list(
    arrays: list[Any], *, dim_names: list[str] | None = None, name: str = ""
) -> tuple[object, object]:
    """The (schema, array) PyCapsules of an arrow.variable_shape_tensor holding a copy of
    `arrays` in one buffer."""

def export_ragged_parts(
    values: Any,
    shapes: np.ndarray,
    *,
    dim_names: list[str] | None = None,
    uniform_shape: list[int | None] | None = None,
    permutation: list[int] | None = None,
    copy: bool | None = None,
    name: str = "",
) -> tuple[object, object]:
    """The (schema, array) PyCapsules of an arrow.variable_shape_tensor viewing `values`,
    its rows of the (n, ndim) int64 `shapes`."""

def ragged_parts(obj: Any, *, copy: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values, shapes) of ragged data: flat values and the rows' (n, ndim) int32 shapes."""

@final
class ArrowMemory:
    """The Arrow buffer behind a NumPy array made by arrowbridge (its ``base``)."""

    @property
    def nbytes(self) -> int: ...
    @property
    def address(self) -> int: ...

def write_arrays(
    path: str | os.PathLike[str],
    names: list[str],
    arrays: list[Any],
    *,
    format: str = "file",
    compression: str | None = None,
) -> None:
    """Writes named arrays to an Arrow IPC file or stream, atomically."""

def write_stream(
    path: str | os.PathLike[str], data: Any, *, format: str = "file", compression: str | None = None
) -> None:
    """Writes every batch of an ``__arrow_c_stream__`` producer to an IPC file or stream."""

def stream_to_arrays(data: Any) -> dict[str, np.ndarray]:
    """Every column of an ``__arrow_c_stream__`` producer as NumPy arrays."""

@final
class AtomicWrite:
    """A file written atomically: ``with AtomicWrite(path) as tmp:`` gives a new temporary
    file next to ``path`` to write by name; when the block ends without an exception, the
    file is flushed to disk and renamed to ``path`` (keeping the permission bits of the file
    it replaces), else removed. A reader of the old file, or a crash, never sees half a file.
    """

    def __new__(cls, path: str | os.PathLike[str]) -> AtomicWrite: ...
    def __enter__(self) -> pathlib.Path: ...
    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> bool: ...

@final
class IpcReader:
    """An open Arrow IPC file or stream."""

    def __new__(
        cls, path: str | os.PathLike[str], *, mmap: bool = True, columns: list[str] | None = None
    ) -> IpcReader: ...
    @property
    def num_batches(self) -> int: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def mapping(self) -> tuple[int, int] | None: ...
    @property
    def names(self) -> list[str]: ...
    @property
    def schema(self) -> str: ...
    def read_all(self) -> dict[str, np.ndarray]: ...
    def read_batch(self, index: int) -> dict[str, np.ndarray]: ...
    def describe(self) -> list[dict[str, Any]]: ...

@final
class FlightServer:
    """The Rust Flight server, running on background threads."""

    def __new__(
        cls,
        host: str,
        port: int,
        *,
        unix: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        shm: bool = True,
        max_bytes: int | None = None,
    ) -> FlightServer: ...
    @property
    def location(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def shutdown(self) -> None: ...

@final
class FlightClient:
    """The native Flight client; every call releases the GIL while data moves."""

    def __new__(
        cls,
        location: str,
        *,
        token: str | None = None,
        tls_root_certs: bytes | None = None,
        shm: bool | None = None,
        timeout: float | None = None,
        trusted: builtins.list[str] = ...,
        background: bool = False,
    ) -> FlightClient: ...
    def put(
        self,
        name: str,
        names: builtins.list[str],
        arrays: builtins.list[Any],
        form: str,
        *,
        timeout: float | None = None,
    ) -> int: ...
    def put_stream(self, name: str, form: str) -> FlightPut: ...
    def get(
        self,
        name: str,
        *,
        columns: builtins.list[str] | None = None,
        rows: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> tuple[str, dict[str, np.ndarray]]: ...
    def stream(
        self,
        name: str,
        *,
        columns: builtins.list[str] | None = None,
        rows: tuple[int, int] | None = None,
        batch_rows: int | None = None,
        timeout: float | None = None,
    ) -> FlightStream: ...
    def list(self, *, timeout: float | None = None) -> builtins.list[dict[str, Any]]: ...
    def info(self, name: str, *, timeout: float | None = None) -> dict[str, Any]: ...
    def put_map(
        self, name: str, schema_ipc: bytes, map_json: str, *, timeout: float | None = None
    ) -> str | None: ...
    def delete(self, name: str, *, timeout: float | None = None) -> None: ...
    def kernels(self, *, timeout: float | None = None) -> dict[str, str]: ...
    def health(self, *, timeout: float | None = None) -> str: ...
    def action(self, kind: str, body: bytes, *, timeout: float | None = None) -> bytes: ...
    def call(
        self,
        kernel: str,
        args: builtins.list[tuple[str, Any]],
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> builtins.list[np.ndarray]: ...
    def submit_get(
        self,
        name: str,
        done: tuple[Completions, int],
        *,
        columns: builtins.list[str] | None = None,
        rows: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def submit_put(
        self,
        name: str,
        names: builtins.list[str],
        arrays: builtins.list[Any],
        form: str,
        done: tuple[Completions, int],
        *,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def submit_put_map(
        self,
        name: str,
        schema_ipc: bytes,
        map_json: str,
        done: tuple[Completions, int],
        *,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def submit_info(
        self,
        name: str | None,
        done: tuple[Completions, int],
        *,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def submit_action(
        self,
        kind: str,
        body: bytes,
        done: tuple[Completions, int],
        *,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def submit_call(
        self,
        kernel: str,
        args: builtins.list[tuple[str, Any]],
        params: dict[str, Any] | None,
        done: tuple[Completions, int],
        *,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def submit_stream(
        self,
        name: str,
        done: tuple[Completions, int],
        *,
        columns: builtins.list[str] | None = None,
        rows: tuple[int, int] | None = None,
        batch_rows: int | None = None,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def cancel(self) -> None: ...
    def abandon(self) -> None: ...
    def close(self) -> None: ...

@final
class FlightStream:
    """The batches of a stored item as they arrive: ``{name: array}`` per batch."""

    @property
    def form(self) -> str: ...
    @property
    def rows(self) -> int: ...
    def __iter__(self) -> FlightStream: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def submit_next(self, done: tuple[Completions, int]) -> PendingCall: ...
    def close(self) -> None: ...

@final
class FlightPut:
    """A put under way whose batches arrive one by one."""

    def send(
        self, names: builtins.list[str], arrays: builtins.list[Any], *, timeout: float | None = None
    ) -> None: ...
    def submit_send(
        self,
        names: builtins.list[str],
        arrays: builtins.list[Any],
        done: tuple[Completions, int],
        *,
        timeout: float | None = None,
    ) -> PendingCall: ...
    def finish(self, *, timeout: float | None = None) -> int: ...
    def submit_finish(
        self, done: tuple[Completions, int], *, timeout: float | None = None
    ) -> PendingCall: ...
    def abort(self) -> None: ...

@final
class Completions:
    """The outcomes of an asyncio client's calls, for its event loop."""

    def __new__(cls) -> Completions: ...
    @property
    def fd(self) -> int: ...
    def drain(self, limit: int) -> builtins.list[tuple[int, Any, BaseException | None]]: ...

@final
class PendingCall:
    """A call under way on a background client."""

    def cancel(self) -> None: ...
    @property
    def done(self) -> bool: ...
