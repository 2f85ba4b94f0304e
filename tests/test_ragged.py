"""Ragged data: lists of arrays as the canonical ``arrow.variable_shape_tensor`` and back.

Zero-copy is proven by addresses; interoperability by pyarrow's own (C++) type: what
arrowbridge makes is what pyarrow reads, writes to IPC and reads back.
"""

import json

import nanoarrow
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest
from conftest import DTYPES, address, sample

import arrowbridge
from arrowbridge.errors import (
    CopyRequiredError,
    DTypeMismatchError,
    InvalidArrowDataError,
    NullValuesError,
    ShapeError,
    UnsupportedTypeError,
)

SHAPES = [(2, 3), (0, 4), (5, 1), (1, 1)]


def ragged_sample(dtype, shapes=SHAPES):
    return [sample(dtype, s, seed=i) for i, s in enumerate(shapes)]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and values (NaN and NaT equal to themselves)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def vst_metadata(arr: pa.Array) -> dict:
    """The extension metadata of the array's type as pyarrow (C++) serializes it."""
    raw = dict(nanoarrow.c_schema(arr.type).metadata.items())[b"ARROW:extension:metadata"]
    return json.loads(raw) if raw else {}


def ipc_round_trip(arr: pa.Array) -> pa.ChunkedArray:
    """Through pyarrow's IPC file writer and reader (C++)."""
    table = pa.table({"x": arr})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_file(pa.BufferReader(sink.getvalue())).read_all().column("x")


# --- Python in ---


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_through_pyarrows_own_type(dtype):
    arrays = ragged_sample(dtype)
    t = arrowbridge.to_arrow(arrays)
    assert isinstance(t, pa.ExtensionArray)
    expected = (
        "arrowbridge.complex_variable_shape_tensor"
        if np.dtype(dtype).kind == "c"
        else "arrow.variable_shape_tensor"
    )
    assert t.type.extension_name == expected
    assert len(t) == len(arrays)
    back = arrowbridge.to_numpy(t)
    assert isinstance(back, list)
    assert all(same(a, b) for a, b in zip(arrays, back, strict=True))
    # and through pyarrow's IPC writer and reader
    again = arrowbridge.to_numpy(ipc_round_trip(t))
    assert all(same(a, b) for a, b in zip(arrays, again, strict=True))


def test_values_are_copied_once_into_one_aligned_buffer_and_views_come_back():
    arrays = [np.arange(12.0).reshape(3, 4), np.arange(10.0).reshape(5, 2)]
    t = arrowbridge.to_arrow(arrays)
    data = t.storage.field("data")
    values = data.values
    base = values.buffers()[1].address
    assert base % 64 == 0
    assert values.to_numpy().tolist() == list(range(12)) + list(range(10))
    views = arrowbridge.to_numpy(t)
    assert address(views[0]) == base
    assert address(views[1]) == base + 12 * 8
    assert not views[0].flags.writeable
    assert views[1].base is views[0].base  # one owner of the Arrow memory for every row
    copies = arrowbridge.to_numpy(t, copy=True)
    assert all(c.flags.writeable and c.flags.owndata for c in copies)
    assert address(copies[0]) != base
    assert all(same(a, b) for a, b in zip(arrays, copies, strict=True))


def test_uniform_shape_and_dim_names_are_written_in_the_specifications_form():
    images = [np.zeros((400, w, 3), np.uint8) for w in (10, 20, 30)]
    t = arrowbridge.to_arrow(images, dim_names=["H", "W", "C"])
    assert vst_metadata(t) == {"dim_names": ["H", "W", "C"], "uniform_shape": [400, None, 3]}
    assert "uniform_shape=[400,null,3]" in str(t.type)
    assert "dim_names=[H,W,C]" in str(t.type)
    # storage exactly as the specification says
    storage = t.type.storage_type
    assert storage.field("data").type == pa.list_(pa.uint8())
    assert storage.field("shape").type == pa.list_(pa.int32(), 3)
    assert t.storage.field("shape").to_pylist() == [[400, w, 3] for w in (10, 20, 30)]


def test_a_list_of_arrays_is_ragged_even_when_shapes_agree_but_lists_of_numbers_are_not():
    same_shape = arrowbridge.to_arrow([np.ones(3), np.zeros(3)])
    assert same_shape.type.extension_name == "arrow.variable_shape_tensor"
    assert vst_metadata(same_shape) == {"uniform_shape": [3]}
    # unchanged: numbers, nested lists, 0-d arrays and empty lists go through np.asarray
    assert arrowbridge.to_arrow([1.0, 2.0]).equals(pa.array([1.0, 2.0]))
    nested = arrowbridge.to_arrow([[1, 2], [3, 4]])
    assert isinstance(nested, pa.FixedShapeTensorArray)
    assert arrowbridge.to_arrow([np.float64(1), np.float64(2)]).equals(pa.array([1.0, 2.0]))
    assert arrowbridge.to_arrow([np.array(1.0), np.array(2.0)]).equals(pa.array([1.0, 2.0]))
    assert len(arrowbridge.to_arrow([])) == 0


def test_strided_fortran_dlpack_and_arrow_elements():
    x = np.arange(24, dtype=np.int32).reshape(4, 6)
    parts = [x[::2, ::3], np.asfortranarray(x), pa.array([1, 2, 3], pa.int32())]
    with pytest.raises(ShapeError, match="element 2"):
        arrowbridge.to_arrow(parts)  # 1-D after 2-D ones
    parts[2] = arrowbridge.to_arrow(np.ones((2, 2), np.int32))  # a fixed-shape tensor: 2-D
    back = arrowbridge.to_numpy(arrowbridge.to_arrow(parts))
    assert same(back[0], np.ascontiguousarray(x[::2, ::3]))
    assert same(back[1], x)
    assert same(back[2], np.ones((2, 2), np.int32))
    jnp = pytest.importorskip("jax.numpy")
    back = arrowbridge.to_numpy(arrowbridge.to_arrow([jnp.ones((2, 3)), jnp.zeros((1, 1))]))
    assert [b.shape for b in back] == [(2, 3), (1, 1)]


def test_list_errors_name_the_element():
    with pytest.raises(DTypeMismatchError, match="element 1 has dtype float32, expected float64"):
        arrowbridge.to_arrow([np.ones(2), np.ones(2, np.float32)])
    with pytest.raises(ShapeError, match="element 1"):
        arrowbridge.to_arrow([np.ones((2, 2)), np.ones(2)])
    with pytest.raises(UnsupportedTypeError, match="ragged list element 2"):
        arrowbridge.to_arrow([np.ones(2), np.ones(3), [1.0]])
    with pytest.raises(CopyRequiredError, match="3 arrays"):
        arrowbridge.to_arrow([np.ones(2)] * 3, copy=False)
    with pytest.raises(ValueError, match="whole=True"):
        arrowbridge.to_arrow([np.ones(2)], whole=True)
    with pytest.raises(ShapeError, match="dim_names"):
        arrowbridge.to_arrow([np.ones((2, 2))], dim_names=["a"])


# --- variable_shape_tensor(values, shapes): no copy ---


def test_variable_shape_tensor_wraps_values_without_a_copy():
    values = np.arange(2 * 3 + 4 * 5, dtype=np.float64)
    t = arrowbridge.variable_shape_tensor(values, [[2, 3], [4, 5]], dim_names=["r", "c"])
    assert t.storage.field("data").values.buffers()[1].address == address(values)
    rows = arrowbridge.to_numpy(t)
    assert address(rows[0]) == address(values)
    assert address(rows[1]) == address(values) + 6 * 8
    assert same(rows[1], values[6:].reshape(4, 5))
    v, s = arrowbridge.to_numpy(t, ragged=True)
    assert address(v) == address(values) and same(v, values)
    assert s.dtype == np.int32 and s.tolist() == [[2, 3], [4, 5]]
    assert address(s) == t.storage.field("shape").values.buffers()[1].address
    assert vst_metadata(t) == {"dim_names": ["r", "c"]}


def test_row_lengths_give_one_dimensional_rows():
    tokens = np.arange(10, dtype=np.int64)
    t = arrowbridge.variable_shape_tensor(tokens, np.array([3, 0, 7]))
    assert [r.tolist() for r in arrowbridge.to_numpy(t)] == [[0, 1, 2], [], list(range(3, 10))]


def test_permutation_gives_transposed_views_and_survives_pyarrow():
    values = np.arange(2 * 3 + 1 * 4, dtype=np.int16)
    t = arrowbridge.variable_shape_tensor(values, [[2, 3], [1, 4]], permutation=[1, 0])
    rows = arrowbridge.to_numpy(t)
    assert same(rows[0], values[:6].reshape(2, 3).T.copy())
    assert rows[0].shape == (3, 2) and rows[0].strides == (2, 6)
    assert address(rows[0]) == address(values)
    assert vst_metadata(t) == {"permutation": [1, 0]}
    back = arrowbridge.to_numpy(ipc_round_trip(t))
    assert same(back[1], values[6:].reshape(1, 4).T.copy())
    _, s = arrowbridge.to_numpy(t, ragged=True)  # physical, the inverse of the constructor
    assert s.tolist() == [[2, 3], [1, 4]]


def test_uniform_shape_given_is_checked_against_every_row():
    values = np.zeros(2 * 3 + 2 * 5)
    t = arrowbridge.variable_shape_tensor(values, [[2, 3], [2, 5]], uniform_shape=[2, None])
    assert vst_metadata(t) == {"uniform_shape": [2, None]}
    with pytest.raises(ShapeError, match=r"row 1: shape \[2, 5\] has size 5 on axis 1"):
        arrowbridge.variable_shape_tensor(values, [[2, 3], [2, 5]], uniform_shape=[2, 3])


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([[2, 3], [2, 3]], "hold 12 elements, values has 10"),
        ([[2, 3], [-1, 4]], "row 1: .*negative"),
        ([[2, 3], [2**31, 1]], "row 1: size 2147483648 on axis 0"),
        ([[2, 3], [2**30, 2**30]], "row 1: rows 0.. hold more than 2\\^31-1 values"),
        ([2, 3, 6], "hold 11 elements, values has 10"),  # row lengths
        (np.zeros((2, 2, 2), np.int64), "shapes: shape"),
    ],
)
def test_shapes_that_do_not_fit_the_values_name_the_row(shapes, message):
    values = np.zeros(10, np.float32)
    with pytest.raises(ShapeError, match=message):
        arrowbridge.variable_shape_tensor(values, shapes)


def test_bad_metadata_is_refused():
    values = np.zeros(6)
    with pytest.raises(InvalidArrowDataError, match="not a permutation"):
        arrowbridge.variable_shape_tensor(values, [[2, 3]], permutation=[0, 0])
    with pytest.raises(ShapeError, match="1 dim_names for 2 axes"):
        arrowbridge.variable_shape_tensor(values, [[2, 3]], dim_names=["a"])
    with pytest.raises(ShapeError, match="uniform_shape"):
        arrowbridge.variable_shape_tensor(values, [[2, 3]], uniform_shape=[2])
    with pytest.raises(ShapeError, match="integers"):
        arrowbridge.variable_shape_tensor(values, [[2.0, 3.0]])


def test_variable_shape_tensor_takes_the_same_time_for_a_kib_and_a_gib():
    import time

    def best(values, shapes):
        times = []
        for _ in range(20):
            start = time.perf_counter()
            t = arrowbridge.variable_shape_tensor(values, shapes)
            arrowbridge.to_numpy(t, ragged=True)
            times.append(time.perf_counter() - start)
        return min(times)

    shapes = np.array([[16, 8]] * 8)  # 8 rows of 128 floats, 1 KiB ...
    small = best(np.zeros(1024 // 4, np.float32), np.array([[8, 4]] * 8))
    big = best(np.empty(2**28, np.float32), shapes * [2**9, 2**9])  # ... or 1 GiB
    assert big < 5 * small + 50e-6, (small, big)


# --- Arrow data from elsewhere: validation ---


def make_vst(data, shapes, ndim, metadata=None, value_type=None, via_pyarrow=True):
    """An arrow.variable_shape_tensor built by pyarrow (C++) from storage pieces (or, when
    not ``via_pyarrow``, a producer of the pieces and the metadata as they are)."""
    storage = pa.StructArray.from_arrays(
        [
            pa.array(data, pa.list_(value_type or pa.float32())),
            pa.array(shapes, pa.list_(pa.int32(), ndim)),
        ],
        names=["data", "shape"],
    )
    field = pa.field(
        "t",
        storage.type,
        metadata={
            "ARROW:extension:name": "arrow.variable_shape_tensor",
            "ARROW:extension:metadata": json.dumps(metadata or {}),
        },
    )

    class Producer:
        def __arrow_c_array__(self, requested_schema=None):
            return field.__arrow_c_schema__(), storage.__arrow_c_array__()[1]

    return pa.array(Producer()) if via_pyarrow else Producer()


def test_the_specifications_examples_read():
    # NCHW data: each row a CHW tensor
    t = make_vst(
        [list(range(2 * 2 * 3)), list(range(2 * 1 * 1))],
        [[2, 2, 3], [2, 1, 1]],
        3,
        {"dim_names": ["C", "H", "W"]},
    )
    assert isinstance(t.type, pa.BaseExtensionType)
    assert [r.shape for r in arrowbridge.to_numpy(t)] == [(2, 2, 3), (2, 1, 1)]
    # color images, fixed height, varying width, three channels
    t = make_vst(
        [[0] * (400 * 2 * 3), [1] * (400 * 5 * 3)],
        [[400, 2, 3], [400, 5, 3]],
        3,
        {"dim_names": ["H", "W", "C"], "uniform_shape": [400, None, 3]},
    )
    assert [r.shape for r in arrowbridge.to_numpy(t)] == [(400, 2, 3), (400, 5, 3)]
    # a permuted tensor: physical [100, 200, 500] with [2, 0, 1] is logical [500, 100, 200]
    t = make_vst([[0.0] * (100 * 200 * 500)], [[100, 200, 500]], 3, {"permutation": [2, 0, 1]})
    (row,) = arrowbridge.to_numpy(t)
    assert row.shape == (500, 100, 200)


def test_arrow_rs_metadata_spelling_reads_as_the_specification():
    # arrow-rs 60 writes "permutations" and explicit nulls, which pyarrow refuses
    t = make_vst(
        [[1, 2, 3, 4, 5, 6]],
        [[2, 3]],
        2,
        {"dim_names": None, "permutations": [1, 0], "uniform_shape": None},
        via_pyarrow=False,
    )
    (row,) = arrowbridge.to_numpy(t)
    assert row.tolist() == [[1, 4], [2, 5], [3, 6]]


def test_rows_that_contradict_their_shape_are_refused_naming_the_row():
    t = make_vst([[1, 2, 3, 4], [1, 2, 3]], [[2, 2], [2, 2]], 2)
    with pytest.raises(ShapeError, match=r"row 1: shape \[2, 2\] holds 4 elements"):
        arrowbridge.to_numpy(t)
    t = make_vst([[1, 2], [1, 2, 3]], [[1, 2], [1, 3]], 2, {"uniform_shape": [1, 2]})
    with pytest.raises(ShapeError, match=r"row 1.*uniform_shape"):
        arrowbridge.to_numpy(t)
    t = make_vst([[], []], [[0, 2], [-1, 0]], 2)
    with pytest.raises(ShapeError, match=r"row 1.*negative"):
        arrowbridge.to_numpy(t)


def test_nulls_are_refused_naming_the_row():
    with pytest.raises(NullValuesError, match="row 1 has a null value"):
        arrowbridge.to_numpy(make_vst([[1, 2], [3, None]], [[2], [2]], 1))
    with pytest.raises(NullValuesError, match="row 2 has null data"):
        arrowbridge.to_numpy(make_vst([[1], [2], None], [[1], [1], [0]], 1))
    with pytest.raises(NullValuesError, match="row 1 has a null size on axis 1"):
        arrowbridge.to_numpy(make_vst([[1], [2]], [[1, 1], [1, None]], 2))


def test_bool_is_bit_packed_so_reading_it_copies():
    t = arrowbridge.to_arrow([np.array([True, False, True]), np.array([False])])
    assert t.type.storage_type.field("data").type == pa.list_(pa.bool_())
    assert [r.tolist() for r in arrowbridge.to_numpy(t)] == [[True, False, True], [False]]
    with pytest.raises(CopyRequiredError, match="bit-packed"):
        arrowbridge.to_numpy(t, copy=False)


def test_chunked_arrays_and_tables_give_one_list():
    # (to_arrow would detect a different uniform_shape, so a different type, in each)
    a = arrowbridge.variable_shape_tensor(np.ones(5), [2, 3])
    b = arrowbridge.variable_shape_tensor(np.zeros(1), [1])
    chunked = pa.chunked_array([a, b])
    rows = arrowbridge.to_numpy(chunked)
    assert [r.shape for r in rows] == [(2,), (3,), (1,)]
    assert address(rows[2]) == b.storage.field("data").values.buffers()[1].address
    assert [r.shape for r in arrowbridge.to_numpy(pa.table({"x": chunked}))] == [(2,), (3,), (1,)]
    v, s = arrowbridge.to_numpy(chunked, ragged=True)  # one buffer needs a copy
    assert v.tolist() == [1.0] * 5 + [0.0] and s.tolist() == [[2], [3], [1]]
    with pytest.raises(CopyRequiredError, match="2 chunks"):
        arrowbridge.to_numpy(chunked, ragged=True, copy=False)


def test_sliced_arrays_view_only_their_rows():
    t = arrowbridge.to_arrow([np.full(2, i, np.int64) for i in range(5)])
    rows = arrowbridge.to_numpy(t.slice(2, 2))
    assert [r.tolist() for r in rows] == [[2, 2], [3, 3]]


# --- kernels ---


def test_ragged_kernels_take_lists_pyarrow_arrays_and_the_row_splits_form():
    arrays = [np.arange(6.0).reshape(2, 3), np.ones((4, 1)), np.zeros((0, 2))]
    sums = arrowbridge.call("ragged_sum", arrays)
    assert sums.tolist() == [15.0, 4.0, 0.0]
    t = arrowbridge.to_arrow(arrays)
    assert arrowbridge.call("ragged_sum", t).tolist() == [15.0, 4.0, 0.0]
    v, s = arrowbridge.to_numpy(t, ragged=True)
    assert arrowbridge.call("ragged_sum", v, s).tolist() == [15.0, 4.0, 0.0]
    assert arrowbridge.call("ragged_sum", [np.array([1, 2], np.int8)]).dtype == np.int64
    dense, mask = arrowbridge.call("pad", arrays)
    assert dense.shape == (3, 4, 3) and mask.shape == (3, 4, 3) and mask.dtype == bool
    assert same(dense[0, :2, :3], arrays[0]) and dense[0, 2:].sum() == 0
    assert mask.sum() == 6 + 4
    assert same(dense[1][mask[1]].reshape(4, 1), arrays[1])


def test_pad_applies_the_permutation():
    values = np.arange(10, dtype=np.float32)
    t = arrowbridge.variable_shape_tensor(values, [[2, 3], [1, 4]], permutation=[1, 0])
    dense, _ = arrowbridge.call("pad", t)
    rows = arrowbridge.to_numpy(t)
    assert dense.shape == (2, 4, 2)
    assert same(dense[0, :3, :2], rows[0]) and same(dense[1, :4, :1], rows[1])


def test_ragged_kernels_refuse_what_they_cannot_sum():
    with pytest.raises(DTypeMismatchError):
        arrowbridge.call("ragged_sum", [np.array(["2020-01-01"], "datetime64[s]")])
    with pytest.raises(UnsupportedTypeError, match="variable_shape_tensor"):
        arrowbridge.call("ragged_sum", pa.array([1.0, 2.0]))


# --- IPC files ---


def test_ipc_round_trip_with_mmap_views_per_element(tmp_path):
    images = [sample("uint8", (h, w, 3), seed=h) for h, w in [(4, 5), (2, 7), (3, 3)]]
    labels = np.arange(3)
    path = tmp_path / "ragged.arrow"
    arrowbridge.write_ipc(path, {"images": images, "labels": labels})
    reader = arrowbridge.open_ipc(path)
    back = reader.read_all()
    assert all(same(a, b) for a, b in zip(images, back["images"], strict=True))
    assert same(back["labels"], labels)
    base, length = reader.mapping
    for row in back["images"]:  # each element a view into the mapping
        assert base <= address(row) < base + length and not row.flags.writeable
    (column,) = [c for c in reader.describe() if c["name"] == "images"]
    assert column["dtype"] == "uint8" and column["shape"] == (3, None, None, 3)
    assert column["zero_copy"] and column["nbytes"] == sum(a.nbytes for a in images)
    # pyarrow (C++) reads the canonical type
    table = pa.ipc.open_file(path).read_all()
    assert table.schema.field("images").type.extension_name == "arrow.variable_shape_tensor"
    assert "uniform_shape=[null,null,3]" in str(table.schema.field("images").type)


def test_ipc_files_of_several_batches_give_views_of_each_batch(tmp_path):
    a = arrowbridge.variable_shape_tensor(np.arange(5.0), [2, 3])
    b = arrowbridge.variable_shape_tensor(np.arange(4.0), [4])
    schema = pa.schema([pa.field("x", a.type)])
    path = tmp_path / "batches.arrow"
    with pa.ipc.new_file(path, schema) as writer:
        writer.write_batch(pa.record_batch([a], schema=schema))
        writer.write_batch(pa.record_batch([b], schema=schema))
    rows = arrowbridge.read_ipc(path)["x"]
    assert [r.tolist() for r in rows] == [[0.0, 1.0], [2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0]]
    batches = [batch["x"] for batch in arrowbridge.iter_ipc(path)]
    assert [len(b) for b in batches] == [2, 1]


def test_a_file_pyarrow_writes_reads_and_ours_reads_in_pyarrow(tmp_path):
    t = make_vst(
        [list(range(6)), list(range(4))],
        [[2, 3], [1, 4]],
        2,
        {"dim_names": ["a", "b"], "permutation": [1, 0]},
    )
    path = tmp_path / "from_pyarrow.arrow"
    with pa.ipc.new_file(path, pa.schema([pa.field("t", t.type)])) as writer:
        writer.write_table(pa.table({"t": t}))
    rows = arrowbridge.read_ipc(path)["t"]
    assert [r.shape for r in rows] == [(3, 2), (4, 1)]
    assert rows[0].tolist() == [[0, 3], [1, 4], [2, 5]]
    ours = tmp_path / "ours.arrow"
    arrowbridge.write_ipc(ours, {"t": rows})
    column = pa.ipc.open_file(ours).read_all().column("t")
    storage = column.chunk(0).storage
    assert storage.field("shape").to_pylist() == [[3, 2], [4, 1]]
    assert storage.field("data").to_pylist()[0] == [0, 3, 1, 4, 2, 5]


def test_ipc_refuses_ragged_columns_of_another_length(tmp_path):
    with pytest.raises(ShapeError, match="one row count"):
        arrowbridge.write_ipc(tmp_path / "x.arrow", {"a": [np.ones(2)], "b": np.ones(3)})


def test_extension_functions_take_ragged_arguments_as_views():
    rowstats = pytest.importorskip("rowstats")  # built by `make build` (examples/extension)
    arrays = [np.arange(6.0).reshape(2, 3), np.ones((1, 4)), np.zeros((0, 2))]
    means = rowstats.ragged_means(arrays)
    assert means[:2].tolist() == [2.5, 1.0] and np.isnan(means[2])
    t = arrowbridge.to_arrow(arrays)
    assert rowstats.ragged_means(t)[:2].tolist() == [2.5, 1.0]
    base = t.storage.field("data").values.buffers()[1].address
    assert rowstats.ragged_addresses(t)[:2] == [base, base + 6 * 8]  # no copy
    with pytest.raises(DTypeMismatchError, match="expected float64"):
        rowstats.ragged_means([np.ones(2, np.float32)])


# --- Flight: the server carries the canonical type to any Flight client ---


def test_pyarrow_flight_puts_and_gets_ragged_columns_through_an_arrowbridge_server():
    import pyarrow.flight as flight

    images = [sample("float32", (h, 3), seed=h) for h in (2, 5, 1)]
    table = pa.table({"images": arrowbridge.to_arrow(images), "label": np.arange(3)})
    with arrowbridge.serve() as server:
        client = flight.connect(server.location)
        descriptor = flight.FlightDescriptor.for_path("ragged")
        writer, _ = client.do_put(descriptor, table.schema)
        writer.write_table(table)
        writer.close()
        info = client.get_flight_info(descriptor)
        got = client.do_get(info.endpoints[0].ticket).read_all()
        client.close()
        assert got.schema.field("images").type.extension_name == "arrow.variable_shape_tensor"
        back = arrowbridge.to_numpy(got.column("images"))
        assert all(same(a, b) for a, b in zip(images, back, strict=True))
        # arrowbridge's own client reads what pyarrow put as a list (tests/test_flight_ragged.py
        # has the rest).
        with arrowbridge.connect(server.location) as ours:
            mine = ours.get("ragged")
            assert all(same(a, b) for a, b in zip(images, mine["images"], strict=True))


def test_a_bare_list_is_written_as_column_data(tmp_path):
    path = tmp_path / "list.arrow"
    arrowbridge.write_ipc(path, [np.ones(2), np.zeros(3)], format="stream")
    back = arrowbridge.read_ipc(path)["data"]
    assert [b.tolist() for b in back] == [[1.0, 1.0], [0.0, 0.0, 0.0]]


def test_plugin_kernels_take_ragged_data(plugin):
    arrays = [np.array([[1.0, 5.0], [2.0, 0.0]]), np.array([[-3.0, -1.0]]), np.zeros((0, 2))]
    maxima = arrowbridge.call("row_max", arrays)
    assert maxima[:2].tolist() == [5.0, -1.0] and np.isnan(maxima[2])
    t = arrowbridge.variable_shape_tensor(np.arange(6.0), [[2, 2], [1, 2]], permutation=[1, 0])
    assert arrowbridge.call("row_max", t).tolist() == [3.0, 5.0]
    assert arrowbridge.kernels()["row_max"].startswith("row_max(x: ragged float64)")


def test_a_list_given_to_a_dense_kernel_points_to_the_ragged_ones():
    with pytest.raises(UnsupportedTypeError, match=r"object type list .*ragged kernels"):
        arrowbridge.call("sum", [np.ones(2), np.ones(3)])


def test_named_shared_memory_carries_ragged_columns_as_views():
    images = [sample("int16", (h, 2), seed=h) for h in (3, 1)]
    with arrowbridge.shm.create("ragged-test", {"images": images}, replace=True):
        other = arrowbridge.shm.attach("ragged-test")
        back = other.read()["images"]
        assert all(same(a, b) for a, b in zip(images, back, strict=True))
        assert not back[0].flags.writeable
