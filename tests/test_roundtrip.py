"""Every dtype and layout round-trips exactly, and memory is neither leaked nor freed early."""

import gc
import sys
import weakref

import numpy as np
import pyarrow as pa
import pytest
from conftest import DTYPES, address, rss_bytes, same_values, sample

import arrowbridge

LAYOUTS = {
    "C": lambda x: x,
    "F": lambda x: np.asfortranarray(x),
    "transposed": lambda x: x.transpose(0, 2, 1),
    "sliced": lambda x: x[::2],
    "reversed": lambda x: x[::-1],
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_to_arrow_to_numpy_round_trips_exactly(dtype, layout):
    x = LAYOUTS[layout](sample(dtype, (4, 3, 2)))
    back = arrowbridge.to_numpy(arrowbridge.to_arrow(x))
    assert same_values(back, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 3), (3, 0), (2, 3, 4, 1, 2)])
def test_shapes_round_trip(dtype, shape):
    x = sample(dtype, shape)
    if x.ndim == 0:
        back = arrowbridge.to_numpy(arrowbridge.to_arrow(x, whole=True))[0]
    else:
        back = arrowbridge.to_numpy(arrowbridge.to_arrow(x))
    assert same_values(back, x)
    assert same_values(arrowbridge.call("identity", x), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pyarrow_reads_what_we_write_and_we_read_what_it_writes(dtype):
    # sample() puts NaT first; pyarrow turns NaT into null, arrowbridge keeps it a value.
    x = sample(dtype, (7,))[1:]
    arr = arrowbridge.to_arrow(x)
    if x.dtype.kind == "b":
        assert arr.equals(pa.array(x).cast(pa.bool8()))
    elif x.dtype.kind != "c":
        assert arr.equals(pa.array(x))
    assert same_values(arrowbridge.to_numpy(arr), x)
    if x.dtype.kind != "c":
        assert same_values(arrowbridge.to_numpy(pa.array(x)), x)


def test_nat_is_a_value_not_a_null():
    x = np.array(["NaT", "2020-01-01"], dtype="datetime64[ns]")
    arr = arrowbridge.to_arrow(x)
    assert arr.null_count == 0
    assert same_values(arrowbridge.to_numpy(arr), x)


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8", "float16", "bool"])
def test_tensors_interoperate_with_pyarrow_both_ways(dtype):
    x = sample(dtype, (5, 2, 3))
    ours = arrowbridge.to_arrow(x)
    if dtype == "bool":
        # pyarrow has no NumPy conversion for bool8 tensors; compare the stored bytes.
        assert ours.type == pa.fixed_shape_tensor(pa.bool8(), [2, 3])
        np.testing.assert_array_equal(
            ours.storage.flatten().storage.to_numpy(), x.ravel().view(np.int8)
        )
        return
    theirs = pa.FixedShapeTensorArray.from_numpy_ndarray(x)
    assert ours.type == theirs.type
    assert ours.equals(theirs)
    assert same_values(arrowbridge.to_numpy(theirs), x)
    assert same_values(ours.to_numpy_ndarray(), x)


def test_complex_survives_pyarrow():
    x = sample("complex64", (3, 2))
    arr = arrowbridge.to_arrow(x)
    # Through pyarrow's own machinery (IPC serialization) and back.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([pa.field("z", arr.type)])) as w:
        w.write_batch(pa.record_batch([arr], names=["z"]))
    column = pa.ipc.open_stream(sink.getvalue()).read_all()["z"]
    assert column.type.extension_name == "arrowbridge.complex_tensor"
    assert same_values(arrowbridge.to_numpy(column), x)


def rss_growth_kib(cycle, warm_up: int, n: int) -> int:
    """How much RSS `cycle(n)` adds once `cycle(warm_up)` has warmed allocators and caches."""
    cycle(warm_up)
    gc.collect()
    before = rss_bytes() // 1024
    cycle(n)
    gc.collect()
    return rss_bytes() // 1024 - before


def test_100k_round_trips_leak_nothing():
    x = np.ones((64, 16), dtype=np.float32)
    refs = sys.getrefcount(x)

    def cycle(n):
        for _ in range(n):
            y = arrowbridge.call("identity", x)
            t = arrowbridge.to_arrow(x)
            z = arrowbridge.to_numpy(t)
            w = arrowbridge.call("add", y, z)
            del y, t, z, w

    grown = rss_growth_kib(cycle, warm_up=10_000, n=100_000)
    assert sys.getrefcount(x) == refs
    assert grown < 2048, f"RSS grew by {grown} KiB over 100k round trips"


@pytest.mark.long
def test_a_million_calls_leak_nothing(plugin):
    # 1,000,000 calls: views of the input (identity), fresh Rust-owned outputs (sum), and a
    # kernel in a plugin library (head: across the C Data Interface both ways).
    x = np.ones((16, 8))
    refs = sys.getrefcount(x)
    call = arrowbridge.call

    def cycle(n):
        for _ in range(n):
            call("identity", x)
            call("sum", x, axis=0)
            call("identity", x)
            call("sum", x)
            call("head", x, n=4)

    grown = rss_growth_kib(cycle, warm_up=20_000, n=200_000)
    assert sys.getrefcount(x) == refs
    assert grown < 2048, f"RSS grew by {grown} KiB over 1M calls"


def test_owner_refcount_returns_after_results_die():
    x = np.arange(10.0)
    refs = sys.getrefcount(x)
    y = arrowbridge.call("identity", x)
    assert sys.getrefcount(x) > refs
    t = arrowbridge.to_arrow(x)
    del y
    assert sys.getrefcount(x) > refs
    del t
    gc.collect()
    assert sys.getrefcount(x) == refs


def test_views_outlive_their_source():
    x = np.arange(1000.0)  # owns its memory: keeping the memory alive keeps x alive
    alive = weakref.ref(x)
    y = arrowbridge.call("identity", x)
    assert address(y) == address(x)  # a view of x, not a copy that outlives nothing
    del x
    gc.collect()
    # A weak reference tells, where reading y could read freed memory still holding the values.
    assert alive() is not None, "the source was freed under its view"
    np.testing.assert_array_equal(y, np.arange(1000.0))
    # Like NumPy's own views, the result's base is the array whose memory it views.
    assert isinstance(y.base, np.ndarray) and address(y) == address(y.base)
