"""The example extension (examples/extension, built on arrowbridge-pyo3): its arguments take
every producer as an ndarray view, follow rust-numpy's borrow rules, raise arrowbridge's
exceptions naming the parameter, and its results reach NumPy and JAX without copies.
(The producer × entry point matrix, extension arguments included, is test_producers.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import rowstats
from conftest import address
from dlpack_producer import CUDA, Producer
from test_dlpack import DLPackOnly

import arrowbridge


def raises_for(parameter: str, cls: type, match: str):
    """pytest.raises for `cls` that also checks PyO3's note naming the parameter."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(cls, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            assert f"while processing '{parameter}'" in getattr(self.info.value, "__notes__", [])
            return suppressed

    return Check()


# --- arguments -------------------------------------------------------------------------------


def test_n_dimensional_inputs_of_every_layout():
    x = np.arange(12.0).reshape(3, 4)
    expected = x.mean(axis=1)
    wide = np.zeros((3, 8))
    wide[:, ::2] = x
    inputs = {
        "numpy": x,
        "fortran order": np.asfortranarray(x),
        "every other column": wide[:, ::2],
        "pyarrow tensor": pa.FixedShapeTensorArray.from_numpy_ndarray(x),
        "polars array column": pl.Series("e", x.tolist(), dtype=pl.Array(pl.Float64, 4)),
        "dlpack, fortran order": DLPackOnly(np.asfortranarray(x)),
    }
    for name, obj in inputs.items():
        np.testing.assert_allclose(rowstats.row_means(obj), expected, err_msg=name)
    with jax.enable_x64(True):
        np.testing.assert_allclose(rowstats.row_means(jnp.asarray(x)), expected)


def test_strided_and_reversed_numpy_views_are_read_in_place():
    x = np.arange(20.0)
    for view in (x[::-1], x[::3], x.reshape(4, 5)[:, 1:3].T):
        assert rowstats.address(view) == address(view)
        assert rowstats.total(view) == view.sum()


def test_float32_and_jax_defaults():
    j = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)
    assert rowstats.total32(j) == 15.0
    with raises_for("x", arrowbridge.DTypeMismatchError, "float32, expected float64"):
        rowstats.total(j)


def test_bad_arguments_raise_arrowbridge_errors_naming_the_parameter():
    with raises_for("x", arrowbridge.DTypeMismatchError, "int64, expected float64"):
        rowstats.total(np.arange(3))
    with raises_for("x", arrowbridge.ShapeError, "1 dimension.*expected 2"):
        rowstats.row_means(np.arange(3.0))
    with raises_for("b", arrowbridge.ShapeError, "2 dimension.*expected 1"):
        rowstats.dot(np.ones(2), np.ones((2, 1)))
    with raises_for("x", arrowbridge.NullValuesError, "1 null"):
        rowstats.total(pa.array([1.0, None]))
    with raises_for("x", arrowbridge.NullValuesError, "masked"):
        rowstats.total(np.ma.masked_array([1.0, 2.0], mask=[False, True]))
    with raises_for("x", arrowbridge.ByteOrderError, ">f8"):
        rowstats.total(np.arange(3.0).astype(">f8"))
    misaligned = np.zeros(80, np.uint8)[1:73].view(np.float64)
    with raises_for("x", arrowbridge.MisalignedBufferError, "aligned to 8"):
        rowstats.total(misaligned)
    with raises_for("x", arrowbridge.UnsupportedTypeError, "list"):
        rowstats.total([1.0, 2.0])
    with raises_for("x", arrowbridge.UnsupportedDeviceError, "cuda:0"):
        rowstats.total(Producer(np.zeros(3), device=(CUDA, 0)))


# --- mutable arguments -----------------------------------------------------------------------


def test_a_mutable_argument_writes_in_place():
    x = np.arange(6.0).reshape(2, 3)
    rowstats.scale(x, 2.0)
    np.testing.assert_array_equal(x, np.arange(6.0).reshape(2, 3) * 2)
    out, y = np.ones(3), np.arange(3.0)
    rowstats.add_into(out, y)
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])


def test_a_mutable_argument_never_aliases_another_view():
    x = np.arange(6.0)
    with raises_for("x", arrowbridge.AlreadyBorrowedError, "already borrowed"):
        rowstats.add_into(x, x)
    with raises_for("x", arrowbridge.AlreadyBorrowedError, "already borrowed"):
        rowstats.add_into(x[:4], x[2:])  # overlapping views of one array
    np.testing.assert_array_equal(x, np.arange(6.0))  # nothing was written
    rowstats.add_into(x[:3], x[3:])  # disjoint halves of the same array
    np.testing.assert_array_equal(x, [3.0, 5.0, 7.0, 3.0, 4.0, 5.0])


def test_a_mutable_argument_takes_writable_numpy_arrays_only():
    x = np.arange(3.0)
    x.flags.writeable = False
    with raises_for("x", arrowbridge.ReadOnlyError, "read-only"):
        rowstats.scale(x, 2.0)
    for other in (pa.array([1.0]), DLPackOnly(np.ones(2)), jnp.ones(2)):
        with raises_for("x", arrowbridge.UnsupportedTypeError, "writable numpy.ndarray"):
            rowstats.scale(other, 2.0)


# --- results ---------------------------------------------------------------------------------


def test_results_are_the_memory_rust_allocated():
    out, rust_address = rowstats.arange(1000)
    assert address(out) == rust_address
    assert out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.arange(1000.0))
    # NumPy's own DLPack export hands the same memory on: to JAX (64-byte aligned, as the
    # extension's allocator makes it) and back into an extension argument.
    assert rust_address % 64 == 0
    with jax.enable_x64(True):
        j = jax.dlpack.from_dlpack(out)
    assert j.unsafe_buffer_pointer() == rust_address
    assert rowstats.address(out) == rust_address
    assert rowstats.total(out) == out.sum()


def test_row_means_matches_its_rust_numpy_twin():
    x = np.random.default_rng(0).random((50, 7))
    np.testing.assert_array_equal(rowstats.row_means(x), rowstats.row_means_numpy(x))
    assert rowstats.total(x) == rowstats.total_numpy(x)
