"""to_arrow: NumPy -> pyarrow, zero-copy where docs/in-process.md says so, and what pyarrow sees."""

import gc
import weakref

import numpy as np
import pyarrow as pa
import pytest
from conftest import DTYPES, address, arrow_values_address, same_values, sample, spec_logical

import arrowbridge
from arrowbridge import CopyRequiredError


@pytest.mark.parametrize("dtype", DTYPES)
def test_1d_arrays_are_zero_copy_primitive_arrays(dtype):
    x = sample(dtype, (17,))
    arr = arrowbridge.to_arrow(x)
    assert len(arr) == 17
    assert arrow_values_address(arr) == address(x)


@pytest.mark.parametrize(
    ("dtype", "arrow_type"),
    [
        ("int32", pa.int32()),
        ("uint64", pa.uint64()),
        ("float16", pa.float16()),
        ("float64", pa.float64()),
        ("bool", pa.bool8()),
        ("datetime64[ms]", pa.timestamp("ms")),
        ("timedelta64[ns]", pa.duration("ns")),
    ],
)
def test_1d_arrow_types(dtype, arrow_type):
    assert arrowbridge.to_arrow(sample(dtype, (3,))).type == arrow_type


def test_1d_values_match_pyarrow():
    x = sample("float32", (100,))
    assert arrowbridge.to_arrow(x).equals(pa.array(x))
    t = sample("datetime64[us]", (5,))[1:]
    assert arrowbridge.to_arrow(t).equals(pa.array(t))


@pytest.mark.parametrize("dtype", ["int8", "uint16", "float32", "float64", "int64"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4), (3, 1, 2, 5)])
def test_nd_arrays_are_canonical_tensors_equal_to_pyarrows(dtype, shape):
    x = sample(dtype, shape)
    arr = arrowbridge.to_arrow(x)
    expected = pa.FixedShapeTensorArray.from_numpy_ndarray(x)
    assert isinstance(arr, pa.FixedShapeTensorArray)
    assert arr.type == pa.fixed_shape_tensor(pa.from_numpy_dtype(x.dtype), list(shape[1:]))
    assert arr.type == expected.type
    assert arr.equals(expected)
    assert arrow_values_address(arr) == address(x)
    np.testing.assert_array_equal(arr.to_numpy_ndarray(), x)


def test_tensor_storage_and_metadata_follow_the_spec():
    arr = arrowbridge.to_arrow(np.zeros((2, 3, 4), dtype=np.float32))
    assert arr.type.extension_name == "arrow.fixed_shape_tensor"
    assert arr.type.storage_type == pa.list_(pa.field("item", pa.float32()), 12)
    assert arr.type.shape == [3, 4]
    assert arr.type.permutation in (None, [0, 1])


def test_transposed_inner_axes_stay_zero_copy_through_permutation():
    base = sample("float64", (2, 3, 4, 5))
    x = base.transpose(0, 3, 1, 2)  # logical (2, 5, 3, 4), axis 0 still outermost
    arr = arrowbridge.to_arrow(x, copy=False)
    assert arrow_values_address(arr) == address(base)
    # The spec: `shape` is the physical shape; logical axis i is physical axis permutation[i].
    assert arr.type.shape == [3, 4, 5]
    assert arr.type.permutation == [2, 0, 1]
    np.testing.assert_array_equal(spec_logical(arr), x)
    back = arrowbridge.to_numpy(arr)
    assert address(back) == address(base)
    assert back.strides == x.strides
    np.testing.assert_array_equal(back, x)


def test_fortran_order_is_copied_and_copy_false_raises():
    x = np.asfortranarray(sample("float64", (4, 3)))
    arr = arrowbridge.to_arrow(x)
    assert arrow_values_address(arr) != address(x)
    np.testing.assert_array_equal(arr.to_numpy_ndarray(), x)
    with pytest.raises(CopyRequiredError, match="axis 0 is not the outermost"):
        arrowbridge.to_arrow(x, copy=False)


def test_step_slices_are_copied_and_copy_false_names_the_strides():
    base = sample("int32", (10, 3))
    x = base[::2]
    arr = arrowbridge.to_arrow(x)
    np.testing.assert_array_equal(arr.to_numpy_ndarray(), x)
    with pytest.raises(CopyRequiredError, match=r"strides \(24, 4\)"):
        arrowbridge.to_arrow(x, copy=False)
    with pytest.raises(CopyRequiredError):
        arrowbridge.to_arrow(np.arange(10.0)[::-1], copy=False)


def test_copy_true_always_copies():
    x = sample("float32", (3, 2))
    arr = arrowbridge.to_arrow(x, copy=True)
    assert arrow_values_address(arr) != address(x)
    assert arr.equals(arrowbridge.to_arrow(x))


@pytest.mark.parametrize("order", ["C", "F"])
def test_whole_array_form_is_zero_copy_in_any_axis_order(order):
    base = sample("int16", (2, 3, 4))
    x = np.asarray(base, order=order)
    for view in (x, x.transpose(2, 0, 1), x.transpose(1, 2, 0)):
        arr = arrowbridge.to_arrow(view, whole=True, copy=False)
        assert len(arr) == 1
        assert arrow_values_address(arr) == address(x)
        np.testing.assert_array_equal(spec_logical(arr)[0], view)
        back = arrowbridge.to_numpy(arr)[0]
        assert address(back) == address(x)
        assert back.strides == view.strides
        np.testing.assert_array_equal(back, view)


def test_dim_names_name_the_element_axes():
    arr = arrowbridge.to_arrow(np.zeros((2, 3, 4)), dim_names=["H", "W"])
    assert arr.type.dim_names == ["H", "W"]
    # dim_names follow the physical layout, as the spec says.
    t = np.zeros((2, 3, 4)).transpose(0, 2, 1)
    arr = arrowbridge.to_arrow(t, dim_names=["W", "H"])
    assert arr.type.dim_names == ["H", "W"]
    with pytest.raises(arrowbridge.ShapeError, match="dim_names"):
        arrowbridge.to_arrow(np.zeros((2, 3)), dim_names=["a", "b"])


def test_bool_nd_is_a_tensor_of_bool8():
    x = sample("bool", (3, 4))
    arr = arrowbridge.to_arrow(x)
    assert arr.type.value_type == pa.bool8()
    assert arrow_values_address(arr) == address(x)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_is_an_interleaved_tensor_extension(dtype):
    x = sample(dtype, (3, 2))
    arr = arrowbridge.to_arrow(x)
    assert arr.type.extension_name == "arrowbridge.complex_tensor"
    floats = arr.storage.flatten().to_numpy()
    np.testing.assert_array_equal(floats, x.view(floats.dtype).ravel())
    assert arrow_values_address(arr) == address(x)


def test_the_arrow_array_keeps_the_numpy_memory_alive():
    # x owns its memory, so whatever keeps the memory alive keeps x alive: a weak reference
    # tells, where reading the values after `del x` could read freed memory still holding them.
    x = np.empty((1000, 8))
    x[...] = sample("float64", (1000, 8))
    assert x.base is None
    expected = x.copy()
    alive = weakref.ref(x)
    arr = arrowbridge.to_arrow(x)
    assert arrow_values_address(arr) == address(x)  # x's memory, not a copy of it
    del x
    gc.collect()
    assert alive() is not None, "the NumPy array was freed while Arrow still views it"
    np.testing.assert_array_equal(arr.to_numpy_ndarray(), expected)
    del arr
    gc.collect()
    assert alive() is None, "the Arrow array never released the NumPy array"


def test_lists_are_accepted_like_numpy_does():
    assert arrowbridge.to_arrow([1.0, 2.0]).equals(pa.array([1.0, 2.0]))


def test_zero_size_dimensions():
    for shape in [(0,), (0, 3), (3, 0), (2, 0, 4)]:
        x = np.zeros(shape, dtype=np.float32)
        back = arrowbridge.to_numpy(arrowbridge.to_arrow(x))
        assert same_values(back, x)
