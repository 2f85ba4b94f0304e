"""DLPack in and out: any `__dlpack__` producer goes into `to_numpy`, `to_arrow`, `call`,
`write_ipc` and Flight `put` without a copy, and results go to JAX without one."""

import gc

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pyarrow as pa
import pytest
from conftest import address
from dlpack_producer import BFLOAT, CUDA, FLOAT, FLOAT8_E4M3FN, INT, Producer

import arrowbridge

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
DTYPES += ["float16", "float32", "float64", "complex64", "complex128"]


class DLPackOnly:
    """An object that speaks DLPack and nothing else (no `__array__`, no Arrow)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def jax_address(x: jax.Array) -> int:
    return x.unsafe_buffer_pointer()


# --- in --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_of_the_table_is_viewed_in_place(dtype):
    x = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    for versioned in (True, False):
        producer = Producer(x, versioned=versioned)
        y = arrowbridge.to_numpy(producer)
        assert y.dtype == x.dtype and y.shape == x.shape
        assert address(y) == address(x)
        np.testing.assert_array_equal(y, x)
        del y
        gc.collect()
        assert producer.deleted == producer.exported == 1


def test_a_versioned_capsule_is_asked_for_first_and_a_legacy_one_is_the_fallback():
    x = np.arange(6.0)
    new, old = Producer(x), Producer(x, versioned=False)
    # Only a versioned capsule carries the read-only flag: a legacy tensor is read-only, as
    # NumPy's own np.from_dlpack makes it.
    assert arrowbridge.to_numpy(new).flags.writeable
    assert not arrowbridge.to_numpy(old).flags.writeable
    assert new.exported == old.exported == 1


def test_numpy_capsules_of_both_versions():
    x = np.arange(12.0).reshape(3, 4)
    y = arrowbridge.to_numpy(DLPackOnly(x))
    assert address(y) == address(x) and y.flags.writeable
    y[0, 0] = 100.0
    assert x[0, 0] == 100.0


def test_any_strides_and_byte_offset_are_viewed_in_place():
    base = np.arange(60.0)
    as_strided = np.lib.stride_tricks.as_strided
    cases = [  # (what the producer says, in elements, and what it means in NumPy)
        (dict(shape=(3, 4), strides=(1, 3)), base[:12].reshape(4, 3).T),  # Fortran order
        (dict(shape=(3, 4), strides=(10, 2)), base[:30].reshape(3, 10)[:, ::2][:, :4]),  # gaps
        (dict(shape=(5,), strides=(-3,), byte_offset=8 * 50), base[50::-3][:5]),  # backwards
        (
            dict(shape=(4, 3), strides=(0, 1), byte_offset=8 * 7),
            as_strided(base[7:], (4, 3), (0, 8)),
        ),
    ]
    for case, expected in cases:
        y = arrowbridge.to_numpy(Producer(base, **case))
        np.testing.assert_array_equal(y, expected)
        assert address(y) == address(expected), case
        assert y.strides == expected.strides, case


def test_a_read_only_tensor_stays_read_only():
    x = np.arange(6.0)
    y = arrowbridge.to_numpy(Producer(x, read_only=True))
    assert not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 1.0
    # A kernel result never aliases it either: identity returns a view of the input only when
    # the input may be written through.
    out = arrowbridge.call("identity", Producer(x, read_only=True))
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
    ("code", "bits", "name"),
    [(BFLOAT, 16, "bfloat16"), (FLOAT8_E4M3FN, 8, "float8_e4m3fn"), (INT, 4, "int4")],
)
def test_unsupported_dtypes_are_named_and_the_tensor_is_released(code, bits, name):
    producer = Producer(np.zeros(8, np.uint8), shape=(4,), strides=(1,), dtype=(code, bits))
    with pytest.raises(arrowbridge.UnsupportedTypeError, match=name):
        arrowbridge.to_numpy(producer)
    assert producer.deleted == producer.exported == 1


def test_jax_bfloat16_and_float8_are_unsupported_types():
    for dtype in (jnp.bfloat16, ml_dtypes.float8_e4m3fn):
        with pytest.raises(arrowbridge.UnsupportedTypeError, match=np.dtype(dtype).name):
            arrowbridge.to_numpy(jnp.ones(3, dtype=dtype))


def test_a_device_tensor_is_refused_by_name_and_released():
    producer = Producer(np.zeros(4), device=(CUDA, 1))
    with pytest.raises(arrowbridge.UnsupportedDeviceError, match="cuda:1"):
        arrowbridge.to_numpy(producer)
    with pytest.raises(BufferError):
        arrowbridge.call("sum", producer)
    assert producer.deleted == producer.exported == 2


def test_the_deleter_runs_exactly_once_however_the_call_ends():
    x = np.arange(12.0).reshape(3, 4)
    ok = Producer(x)
    assert arrowbridge.call("sum", ok, axis=0).tolist() == x.sum(0).tolist()
    gc.collect()
    assert ok.deleted == ok.exported == 1

    # The kernel refuses its parameters after the tensor was taken.
    bad_axis = Producer(x)
    with pytest.raises(arrowbridge.ArrowBridgeError, match="axis"):
        arrowbridge.call("sum", bad_axis, axis=5)
    gc.collect()
    assert bad_axis.deleted == bad_axis.exported == 1

    # A bad byte offset: misaligned for float64.
    misaligned = Producer(x, shape=(2,), strides=(1,), byte_offset=3, dtype=(FLOAT, 64))
    with pytest.raises(arrowbridge.ArrowBridgeError, match="align"):
        arrowbridge.to_numpy(misaligned)
    assert misaligned.deleted == misaligned.exported == 1

    # A view kept past the call holds the tensor; its last view releases it.
    kept = Producer(x)
    y = arrowbridge.to_numpy(kept)
    z = y[1:]
    del y
    gc.collect()
    assert kept.deleted == 0
    del z
    gc.collect()
    assert kept.deleted == 1


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (dict(shape=(-1,), strides=(1,)), "negative length"),
        (dict(shape=(1 << 40, 1 << 40), strides=(1, 1)), "too big"),
        (dict(shape=(2, 3), strides=(1 << 62, 1)), "overflow"),
        (dict(shape=(4,), strides=(-1,), data=8), "below address 0"),
        (dict(shape=(4,), strides=(1,), data=0), "NULL"),
    ],
    ids=["negative length", "shape overflows", "strides overflow", "reaches below 0", "NULL"],
)
def test_hostile_tensors_are_refused_and_released(case, message):
    base = np.zeros(8)
    producer = Producer(base, **case)
    with pytest.raises(arrowbridge.InvalidArrowDataError, match=message):
        arrowbridge.to_numpy(producer)
    assert producer.deleted == producer.exported == 1


def test_a_used_capsule_is_not_read_twice():
    capsule = np.arange(3.0).__dlpack__()

    class Same:
        def __dlpack__(self, **kwargs):
            return capsule

        def __dlpack_device__(self):
            return (1, 0)

    arrowbridge.to_numpy(Same())
    with pytest.raises(arrowbridge.InvalidArrowDataError, match="used"):
        arrowbridge.to_numpy(Same())


def test_dlpack_into_to_arrow_call_and_write_ipc(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    t = arrowbridge.to_arrow(DLPackOnly(x))
    assert isinstance(t.type, pa.FixedShapeTensorType)
    np.testing.assert_array_equal(t.to_numpy_ndarray(), x)
    assert t.storage.values.buffers()[1].address == address(x)

    np.testing.assert_array_equal(arrowbridge.call("sum", DLPackOnly(x), axis=1), x.sum(1))
    np.testing.assert_array_equal(arrowbridge.call("add", DLPackOnly(x), x), 2 * x)

    path = tmp_path / "x.arrow"
    arrowbridge.write_ipc(path, DLPackOnly(x))
    np.testing.assert_array_equal(arrowbridge.read_ipc(path)["data"], x)


def test_dlpack_into_flight_put_and_call():
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    with arrowbridge.serve() as server, arrowbridge.connect(server.location, shm=False) as client:
        client.put("j", jnp.asarray(x))
        np.testing.assert_array_equal(client.get("j"), x)
        np.testing.assert_array_equal(client.call("sum", DLPackOnly(x), axis=0), x.sum(0))


# --- JAX -------------------------------------------------------------------------------------


def test_jax_arrays_in_without_copies():
    j = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    y = arrowbridge.to_numpy(j)
    assert address(y) == jax_address(j)
    assert not y.flags.writeable  # JAX arrays are immutable
    np.testing.assert_array_equal(arrowbridge.call("sum", j, axis=1), np.asarray(j).sum(1))
    t = arrowbridge.to_arrow(j)
    assert t.storage.values.buffers()[1].address == jax_address(j)


def test_results_go_to_jax_without_copies():
    # XLA adopts memory aligned to 64 bytes; arrowbridge aligns every result of 64 bytes or
    # more (smaller ones are copied by JAX, which costs nothing worth measuring).
    rows = np.tile(np.array([[3.0, 4.0], [6.0, 8.0]], np.float32), (8, 1))
    out = arrowbridge.call("normalize", rows)
    assert out.nbytes >= 64 and address(out) % 64 == 0
    back = jax.dlpack.from_dlpack(out)
    assert jax_address(back) == address(out)
    np.testing.assert_allclose(np.asarray(back), np.tile([[0.6, 0.8]], (16, 1)), rtol=1e-6)
    # and round trip: the JAX array in again is still the same memory
    assert address(arrowbridge.to_numpy(back)) == address(out)
