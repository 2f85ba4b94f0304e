"""Helpers shared by the tests: where data lives, so zero-copy is proven by addresses."""

import contextlib
import ctypes
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import arrowbridge

# Every dtype arrowbridge carries, with a way to make varied values of it.
DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    *[f"datetime64[{u}]" for u in ("s", "ms", "us", "ns")],
    *[f"timedelta64[{u}]" for u in ("s", "ms", "us", "ns")],
]


def sample(dtype: str, shape, seed: int = 0) -> np.ndarray:
    """A C-ordered array of `shape` with varied values of `dtype`."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    dt = np.dtype(dtype)
    if dt.kind == "b":
        flat = rng.integers(0, 2, n).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        flat = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
    elif dt.kind == "f":
        flat = rng.standard_normal(n).astype(dt)
    elif dt.kind == "c":
        flat = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt)
    else:  # datetime64 / timedelta64, NaT included
        flat = rng.integers(-(10**12), 10**12, n).astype(np.int64).view(dt)
        if n:
            flat[0] = np.array("NaT", dtype=dt)
    return flat.reshape(shape)


def address(x: np.ndarray) -> int:
    """Address of a NumPy array's first element."""
    return x.__array_interface__["data"][0]


def arrow_values_address(arr: pa.Array) -> int:
    """Address of the first value of a primitive or tensor pyarrow array."""
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        offset = arr.offset * size
        arr = arr.values
        offset += arr.offset
    else:
        offset = arr.offset
    width = arr.type.bit_width // 8
    return arr.buffers()[1].address + offset * width


def spec_logical(arr: pa.ExtensionArray) -> np.ndarray:
    """A tensor array's logical contents computed straight from the specification.

    ``shape`` is the physical (row-major) shape; logical axis ``i`` is physical axis
    ``permutation[i]``. (pyarrow 26's ``to_numpy_ndarray`` gets the strides of permuted
    tensors wrong, so the tests do not use it as the reference for them.)
    """
    shape = list(arr.type.shape)
    perm = arr.type.permutation or list(range(len(shape)))
    values = arr.storage.flatten().to_numpy(zero_copy_only=False)
    physical = values.reshape([len(arr), *shape])
    return physical.transpose([0, *[p + 1 for p in perm]])


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of dtype, shape and bits (NaN and NaT compare equal to themselves)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return a.tobytes() == b.tobytes()


@pytest.fixture
def ab():
    return arrowbridge


class _ArrowArray(ctypes.Structure):
    _fields_ = [
        ("length", ctypes.c_int64),
        ("null_count", ctypes.c_int64),
        ("offset", ctypes.c_int64),
        ("n_buffers", ctypes.c_int64),
        ("n_children", ctypes.c_int64),
        ("buffers", ctypes.c_void_p),
        ("children", ctypes.c_void_p),
        ("dictionary", ctypes.c_void_p),
        ("release", ctypes.c_void_p),
        ("private_data", ctypes.c_void_p),
    ]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_KEEP = []  # the raw structs must outlive their capsules


class RawArrow:
    """An Arrow producer whose C struct fields can be corrupted, as a hostile producer would."""

    def __init__(self, arr: pa.Array, field: pa.Field | None = None, **fields):
        self.struct = _ArrowArray()
        arr._export_to_c(ctypes.addressof(self.struct))
        for name, value in fields.items():
            setattr(self.struct, name, value)
        self.field = field if field is not None else pa.field("", arr.type)
        _KEEP.append(self.struct)

    def __arrow_c_array__(self, requested_schema=None):
        capsule = _capsule_new(ctypes.addressof(self.struct), b"arrow_array", None)
        return self.field.__arrow_c_schema__(), capsule


ROOT = Path(__file__).resolve().parent.parent

# The example kernel plugin (crates/example-kernels), built by `make build`.
PLUGIN = ROOT / "target" / "release" / "libarrowbridge_example_kernels.so"


@pytest.fixture(scope="session")
def plugin() -> Path:
    assert PLUGIN.exists(), f"{PLUGIN} is missing: `make build` builds it"
    arrowbridge.load_kernels(PLUGIN)
    return PLUGIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cli_server(*args, port=0, preexec_fn=None):
    """``python -m arrowbridge serve --port PORT *args`` in a process of its own, once it
    listens: (process, location). Port 0 (the default) lets the server bind a free port
    itself, which its first line names, so no other process can take it first; a restart
    on the same port passes the port of the first start."""
    command = [sys.executable, "-m", "arrowbridge", "serve", "--port", str(port), *map(str, args)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    line = proc.stdout.readline()
    found = re.search(r"grpc://127\.0\.0\.1:(\d+)", line)
    assert found and (port == 0 or int(found[1]) == port), line
    return proc, found[0]


@contextlib.contextmanager
def server_process(*args, preexec_fn=None):
    """:func:`start_cli_server` as a context: the server is stopped with SIGTERM at the end,
    and must exit cleanly."""
    proc, location = start_cli_server(*args, preexec_fn=preexec_fn)
    try:
        yield proc, location
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, "the server did not stop cleanly"


def race_puts(writers, name: str, puts: int, rows: int, shards: int) -> None:
    """Puts of ``name`` from two or more cluster clients at once, in threads started
    together: ``writers`` pairs each client with a base, and its ``k``-th put stores ``rows``
    rows of ``base + k``, sharded ``shards`` ways. Raises what any put raised."""
    start, failures = threading.Barrier(len(writers)), []

    def put_versions(client, base):
        try:
            start.wait()
            for k in range(puts):
                client.put(name, np.full((rows, 2), float(base + k)), shards=shards)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=put_versions, args=pair) for pair in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures


def rss_bytes(pid: int | str = "self", kind: str = "VmRSS") -> int:
    """The resident memory of process ``pid`` (this one by default), in bytes: all of it, or
    one ``kind`` of ``/proc/PID/status`` (``RssAnon``: the process's own memory, not the
    page cache of files it maps)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {kind} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def server():
    """A Flight server in this process, shared by the tests of a module."""
    with arrowbridge.serve() as s:
        yield s


@pytest.fixture
def client(server):
    """A client of the module's server over gRPC (shared memory, which a client on this host
    would use, has tests of its own)."""
    with arrowbridge.connect(server.location, shm=False) as c:
        yield c


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"grpc://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


class EchoServer(flight.FlightServerBase):
    """A plain pyarrow.flight server: stores what is put, serves it back."""

    def __init__(self, location):
        super().__init__(location)
        self.tables = {}

    def do_put(self, context, descriptor, reader, writer):
        self.tables[descriptor.path[0].decode()] = reader.read_all()

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])

    def list_flights(self, context, criteria):
        for name, t in self.tables.items():
            descriptor = flight.FlightDescriptor.for_path(name)
            yield flight.FlightInfo(t.schema, descriptor, [], t.num_rows, t.nbytes)

    def get_flight_info(self, context, descriptor):
        t = self.tables[descriptor.path[0].decode()]
        return flight.FlightInfo(t.schema, descriptor, [], t.num_rows, t.nbytes)


@pytest.fixture
def servers():
    """Three in-process Flight servers (the sharded-item tests' cluster)."""
    started = [arrowbridge.serve() for _ in range(3)]
    yield started
    for server in started:
        server.shutdown()
