"""to_numpy: Arrow producers -> NumPy, zero-copy for one chunk, clear errors otherwise."""

import gc

import numpy as np
import pyarrow as pa
import pytest
from conftest import RawArrow, address, arrow_values_address, sample, spec_logical

import arrowbridge
from arrowbridge import (
    CopyRequiredError,
    InvalidArrowDataError,
    MisalignedBufferError,
    NullValuesError,
    UnsupportedTypeError,
)


def test_primitive_pyarrow_arrays_are_viewed_in_place():
    arr = pa.array(np.arange(10, dtype=np.int64))
    x = arrowbridge.to_numpy(arr)
    assert x.dtype == np.int64
    assert address(x) == arrow_values_address(arr)
    assert not x.flags.writeable


def test_slices_keep_their_offset():
    arr = pa.array(np.arange(10, dtype=np.float32)).slice(3, 4)
    x = arrowbridge.to_numpy(arr)
    np.testing.assert_array_equal(x, [3, 4, 5, 6])
    assert address(x) == arrow_values_address(arr)


def test_pyarrows_own_tensors_are_read_in_place():
    data = sample("float32", (6, 2, 3))
    arr = pa.FixedShapeTensorArray.from_numpy_ndarray(data)
    x = arrowbridge.to_numpy(arr)
    np.testing.assert_array_equal(x, data)
    assert address(x) == arrow_values_address(arr)
    sliced = arrowbridge.to_numpy(arr[2:5])
    np.testing.assert_array_equal(sliced, data[2:5])
    assert address(sliced) == arrow_values_address(arr) + 2 * 6 * 4


def test_permuted_tensors_are_read_as_the_spec_says():
    physical = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(physical.ravel()), 60)
    tensor_type = pa.fixed_shape_tensor(pa.float64(), [3, 4, 5], permutation=[2, 0, 1])
    arr = pa.ExtensionArray.from_storage(tensor_type, storage)
    x = arrowbridge.to_numpy(arr)
    assert x.shape == (2, 5, 3, 4)  # the spec's example: logical shape [500, 100, 200]
    np.testing.assert_array_equal(x, physical.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(x, spec_logical(arr))
    assert address(x) == arrow_values_address(arr)


def test_bool8_is_viewed_and_bitpacked_bool_is_unpacked():
    arr = pa.array([True, False, True]).cast(pa.bool8())
    x = arrowbridge.to_numpy(arr)
    assert x.dtype == np.bool_
    assert address(x) == arrow_values_address(arr)
    packed = pa.array([True, False, True])
    np.testing.assert_array_equal(arrowbridge.to_numpy(packed), [True, False, True])
    with pytest.raises(UnsupportedTypeError, match="bit-packed"):
        arrowbridge.to_numpy(packed, copy=False)


def test_temporal_types():
    arr = pa.array(np.array(["2024-01-01", "2024-02-03"], dtype="datetime64[ms]"))
    x = arrowbridge.to_numpy(arr)
    assert x.dtype == np.dtype("datetime64[ms]")
    assert address(x) == arrow_values_address(arr)
    d = arrowbridge.to_numpy(pa.array([1, 2], pa.duration("us")))
    assert d.dtype == np.dtype("timedelta64[us]")
    with pytest.raises(UnsupportedTypeError, match="time zone"):
        arrowbridge.to_numpy(pa.array([1], pa.timestamp("s", tz="UTC")))


def test_chunked_arrays():
    one = pa.chunked_array([pa.array([1.0, 2.0])])
    x = arrowbridge.to_numpy(one, copy=False)
    assert address(x) == arrow_values_address(one.chunk(0))
    many = pa.chunked_array([[1, 2], [3]])
    np.testing.assert_array_equal(arrowbridge.to_numpy(many), [1, 2, 3])
    with pytest.raises(CopyRequiredError, match="2 chunks"):
        arrowbridge.to_numpy(many, copy=False)
    empty = pa.chunked_array([], type=pa.int16())
    assert arrowbridge.to_numpy(empty).shape == (0,)


def test_copy_true_gives_a_fresh_writable_array():
    arr = pa.array([1, 2, 3])
    x = arrowbridge.to_numpy(arr, copy=True)
    assert x.flags.writeable
    assert address(x) != arrow_values_address(arr)


def test_numpy_input_is_returned_as_is():
    x = np.arange(3)
    assert arrowbridge.to_numpy(x) is x


def test_the_result_keeps_the_arrow_memory_alive():
    # pyarrow's memory pool counts the buffer: it stays allocated after the Arrow array is
    # gone, for as long as the NumPy view of it lives, and is freed with the view.
    before = pa.total_allocated_bytes()
    arr = pa.array(range(100_000), pa.float64())  # allocated by pyarrow, not by NumPy
    assert pa.total_allocated_bytes() - before >= 800_000
    x = arrowbridge.to_numpy(arr)
    assert address(x) == arrow_values_address(arr)
    del arr
    gc.collect()
    assert pa.total_allocated_bytes() - before >= 800_000
    assert x[-1] == 99_999.0
    del x
    gc.collect()
    assert pa.total_allocated_bytes() - before < 800_000


def test_nulls_are_an_error_naming_the_count():
    with pytest.raises(NullValuesError, match="2 null"):
        arrowbridge.to_numpy(pa.array([1.0, None, None]))


def test_a_validity_buffer_without_nulls_is_fine():
    arr = pa.array([1.0, None, 3.0]).fill_null(2.0)
    np.testing.assert_array_equal(arrowbridge.to_numpy(arr), [1.0, 2.0, 3.0])
    with_buffer = pa.Array.from_buffers(
        pa.int32(),
        2,
        [pa.py_buffer(np.array([255], np.uint8)), pa.py_buffer(np.array([7, 8], np.int32))],
    )
    np.testing.assert_array_equal(arrowbridge.to_numpy(with_buffer), [7, 8])


def test_unsupported_types_name_the_type():
    with pytest.raises(UnsupportedTypeError, match=r"Utf8|string"):
        arrowbridge.to_numpy(pa.array(["a"]))
    with pytest.raises(UnsupportedTypeError, match="object type int"):
        arrowbridge.to_numpy(3)


def test_misaligned_buffers_are_copied_or_refused():
    raw = np.zeros(17, dtype=np.uint8)
    raw[1:] = np.array([7, 8], np.int64).view(np.uint8)  # values a wrong start cannot give
    buf = pa.py_buffer(raw)[1:]
    arr = pa.Array.from_buffers(pa.int64(), 2, [None, buf])
    np.testing.assert_array_equal(arrowbridge.to_numpy(arr), [7, 8])
    with pytest.raises(MisalignedBufferError, match="not aligned to 8 bytes"):
        arrowbridge.to_numpy(arr, copy=False)


def test_lengths_that_do_not_match_the_buffers_are_refused():
    # A producer that claims more values than its buffer holds must not cause an
    # out-of-bounds read. The C Data Interface carries no buffer sizes, so the import cannot
    # see the lie in general; a length beyond the buffer's allocation is caught by the
    # bounds the producer's buffers do carry here (an offset past the end).
    arr = pa.array(np.arange(4, dtype=np.int64))
    with pytest.raises(InvalidArrowDataError, match=r"declares a negative length \(-1\)"):
        arrowbridge.to_numpy(RawArrow(arr, length=-1))
    with pytest.raises(InvalidArrowDataError, match=r"declares a negative offset \(-3\)"):
        arrowbridge.to_numpy(RawArrow(arr, offset=-3))


def test_buffer_and_child_counts_that_disagree_with_the_type_are_refused():
    # Found by tests/test_fuzz.py: arrow-rs's import trusts n_buffers and n_children, and
    # reading past a producer's pointer arrays crashed the process.
    arr = pa.array(np.arange(4, dtype=np.int64))
    with pytest.raises(InvalidArrowDataError, match=r"has 3 buffer\(s\); a Int64 array has 2"):
        arrowbridge.to_numpy(RawArrow(arr, n_buffers=3))
    with pytest.raises(InvalidArrowDataError, match=r"has 1 child array\(s\); a Int64 array has 0"):
        arrowbridge.to_numpy(RawArrow(arr, n_children=1))
    with pytest.raises(InvalidArrowDataError, match=r"has 0 buffer\(s\)"):
        arrowbridge.call("identity", RawArrow(arr, n_buffers=0))


def test_inconsistent_tensor_metadata_is_refused():
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12.0)), 6)

    class Fake:
        def __init__(self, meta):
            self.meta = meta

        def __arrow_c_array__(self, requested_schema=None):
            field = pa.field(
                "t",
                storage.type,
                metadata={
                    "ARROW:extension:name": "arrow.fixed_shape_tensor",
                    "ARROW:extension:metadata": self.meta,
                },
            )
            return field.__arrow_c_schema__(), storage.__arrow_c_array__()[1]

    with pytest.raises(InvalidArrowDataError, match="cannot hold a tensor of shape"):
        arrowbridge.to_numpy(Fake('{"shape":[2,2]}'))
    # arrow-rs 60 spells it "permutations": read as the specification's "permutation"
    np.testing.assert_array_equal(
        arrowbridge.to_numpy(Fake('{"shape":[2,3],"dim_names":null,"permutations":[1,0]}')),
        np.arange(12.0).reshape(2, 2, 3).transpose(0, 2, 1),
    )
    with pytest.raises(InvalidArrowDataError, match=r"unknown field `permutatoin`"):
        arrowbridge.to_numpy(Fake('{"shape":[2,3],"permutatoin":[1,0]}'))
    with pytest.raises(InvalidArrowDataError, match="not a permutation"):
        arrowbridge.to_numpy(Fake('{"shape":[2,3],"permutation":[1,1]}'))
    np.testing.assert_array_equal(
        arrowbridge.to_numpy(Fake('{"shape":[2,3]}')), np.arange(12.0).reshape(2, 2, 3)
    )


class TestForeignProducers:
    def test_nanoarrow(self):
        na = pytest.importorskip("nanoarrow", reason="nanoarrow is in requirements-dev.txt")
        arr = na.c_array([1, 2, 3], na.int32())
        np.testing.assert_array_equal(arrowbridge.to_numpy(arr), [1, 2, 3])

    def test_polars_series_offers_only_a_stream(self):
        pl = pytest.importorskip("polars", reason="polars is in requirements-dev.txt")
        s = pl.Series("x", [1.5, 2.5, 3.5])
        assert not hasattr(s, "__arrow_c_array__")
        x = arrowbridge.to_numpy(s)
        np.testing.assert_array_equal(x, [1.5, 2.5, 3.5])

    def test_polars_array_column_is_2d(self):
        pl = pytest.importorskip("polars", reason="polars is in requirements-dev.txt")
        s = pl.Series("e", [[1.0, 2.0], [3.0, 4.0]], dtype=pl.Array(pl.Float64, 2))
        np.testing.assert_array_equal(arrowbridge.to_numpy(s), [[1.0, 2.0], [3.0, 4.0]])

    def test_duckdb_result(self):
        duckdb = pytest.importorskip("duckdb", reason="duckdb is in requirements-dev.txt")
        rel = duckdb.sql("select range::DOUBLE as v from range(5)")
        column = rel.to_arrow_table()["v"]
        np.testing.assert_array_equal(arrowbridge.to_numpy(column), [0, 1, 2, 3, 4])
