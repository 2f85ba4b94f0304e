"""Foreign producers and consumers: arrays made by pyarrow, polars, duckdb and nanoarrow go
into `to_numpy` and `call`; what arrowbridge exports is accepted by each of them."""

import duckdb
import nanoarrow as na
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import address, arrow_values_address

import arrowbridge

# --- producers -------------------------------------------------------------------------------


def with_validity_buffer(values: np.ndarray) -> pa.Array:
    """A pyarrow array that carries an all-valid validity bitmap (null_count 0)."""
    bitmap = pa.py_buffer(np.packbits(np.ones(len(values), bool), bitorder="little"))
    data = pa.py_buffer(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [bitmap, data])


PRODUCERS = {
    "pyarrow sliced": lambda: pa.array(np.arange(10.0)).slice(3, 4),
    "pyarrow chunked": lambda: pa.chunked_array([pa.array([3.0, 4.0]), pa.array([5.0, 6.0])]),
    "pyarrow validity buffer, no nulls": lambda: with_validity_buffer(np.arange(3.0, 7.0)),
    "pyarrow table of one column": lambda: pa.table({"v": [3.0, 4.0, 5.0, 6.0]}),
    "polars series": lambda: pl.Series("v", [3.0, 4.0, 5.0, 6.0]),
    "polars sliced series": lambda: pl.Series("v", [0.0, 3.0, 4.0, 5.0, 6.0])[1:],
    "polars dataframe of one column": lambda: pl.DataFrame({"v": [3.0, 4.0, 5.0, 6.0]}),
    "duckdb relation": lambda: duckdb.sql("select (range + 3)::DOUBLE as v from range(4)"),
    "nanoarrow array": lambda: na.c_array([3.0, 4.0, 5.0, 6.0], na.float64()),
    "nanoarrow stream": lambda: na.c_array_stream([3.0, 4.0, 5.0, 6.0], na.float64()),
}


@pytest.mark.parametrize("make", PRODUCERS.values(), ids=PRODUCERS.keys())
def test_foreign_arrays_into_to_numpy_and_call(make):
    expected = np.array([3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(arrowbridge.to_numpy(make()), expected)
    np.testing.assert_array_equal(arrowbridge.call("identity", make()), expected)
    assert arrowbridge.call("sum", make()) == 18.0
    np.testing.assert_array_equal(arrowbridge.call("add", make(), np.ones(4)), expected + 1)


def test_foreign_tensors_into_call():
    rows = np.arange(12.0).reshape(4, 3)
    pyarrow_tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(rows).slice(1, 2)
    np.testing.assert_array_equal(arrowbridge.call("sum", pyarrow_tensor, axis=1), [12.0, 21.0])
    polars_array = pl.Series("e", rows.tolist(), dtype=pl.Array(pl.Float64, 3))
    np.testing.assert_array_equal(arrowbridge.call("sum", polars_array, axis=0), rows.sum(0))
    relation = duckdb.sql("select [1.0, 2.0, 3.0]::DOUBLE[3] as e from range(2)")
    np.testing.assert_array_equal(arrowbridge.call("identity", relation), [[1, 2, 3]] * 2)


def test_sliced_pyarrow_input_is_viewed_in_place():
    arr = pa.array(np.arange(10.0)).slice(3, 4)
    assert address(arrowbridge.call("identity", arr)) == arrow_values_address(arr)
    assert address(arrowbridge.to_numpy(arr)) == arrow_values_address(arr)


def test_a_sliced_one_field_struct_is_its_field_sliced():
    struct = pa.StructArray.from_arrays([pa.array(np.arange(6.0))], names=["v"]).slice(2, 3)
    np.testing.assert_array_equal(arrowbridge.to_numpy(struct), [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(arrowbridge.call("identity", struct), [2.0, 3.0, 4.0])


def test_tables_of_several_columns_name_them():
    table = pa.table({"a": [1.0], "b": [2.0]})
    with pytest.raises(
        arrowbridge.UnsupportedTypeError, match=r'2 columns \["a", "b"\].*table\["a"\]'
    ):
        arrowbridge.to_numpy(table)
    with pytest.raises(arrowbridge.UnsupportedTypeError, match="2 columns"):
        arrowbridge.call("sum", pl.DataFrame({"a": [1.0], "b": [2.0]}))


# --- consumers -------------------------------------------------------------------------------

MATRIX = np.arange(12.0).reshape(4, 3)


def test_pyarrow_validates_what_we_export():
    for x in (MATRIX, np.arange(5, dtype=np.int16), np.array([True, False]), MATRIX.T):
        arrowbridge.to_arrow(x).validate(full=True)
        arrowbridge.to_arrow(x, whole=True).validate(full=True)


def test_polars_reads_what_we_export():
    assert pl.Series(arrowbridge.to_arrow(np.arange(5, dtype=np.int32))).to_list() == [
        0,
        1,
        2,
        3,
        4,
    ]
    df = pl.from_arrow(pa.table({"e": arrowbridge.to_arrow(MATRIX)}))
    assert df.height == 4
    np.testing.assert_array_equal(df["e"].to_numpy(), MATRIX)


def test_duckdb_queries_what_we_export():
    exported = pa.table(  # noqa: F841 - duckdb finds it by name
        {"e": arrowbridge.to_arrow(MATRIX), "v": arrowbridge.to_arrow(np.arange(4.0))}
    )
    assert duckdb.sql("select sum(v), count(*) from exported").fetchall() == [(6.0, 4)]
    assert duckdb.sql("select e[2] from exported").fetchall() == [(1.0,), (4.0,), (7.0,), (10.0,)]


def test_nanoarrow_reads_what_we_export():
    assert na.Array(arrowbridge.to_arrow(np.arange(4, dtype=np.uint8))).to_pylist() == [0, 1, 2, 3]
    tensor = na.Array(arrowbridge.to_arrow(MATRIX))
    assert tensor.schema.extension.name == "arrow.fixed_shape_tensor"
    assert len(tensor) == 4


def test_kernel_results_go_straight_to_other_libraries():
    out = arrowbridge.call("normalize", MATRIX[1:])
    df = pl.from_arrow(pa.table({"unit": arrowbridge.to_arrow(out)}))
    np.testing.assert_allclose(np.linalg.norm(df["unit"].to_numpy(), axis=1), 1.0)
