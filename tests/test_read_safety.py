"""What reading must never do: lose a column to a duplicate name, abort on a size the process
may not allocate, or refuse data it can carry with an error that contradicts itself."""

import json
import resource
import struct
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import arrowbridge


def duplicate_names_file(path):
    table = pa.table([pa.array([1, 2], pa.int64()), pa.array([0.5, 1.5])], names=["x", "x"])
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    return path


@pytest.mark.parametrize(
    "read",
    [
        arrowbridge.read_ipc,
        lambda p: list(arrowbridge.iter_ipc(p)),
        lambda p: arrowbridge.open_ipc(p).describe(),
    ],
    ids=["read_ipc", "iter_ipc", "describe"],
)
def test_duplicate_column_names_are_refused_not_half_read(tmp_path, read):
    path = duplicate_names_file(tmp_path / "dup.arrow")
    with pytest.raises(arrowbridge.InvalidFileError, match='2 columns are named "x"'):
        read(path)


def test_writing_duplicate_column_names_is_refused(tmp_path):
    table = pa.table([pa.array([1, 2]), pa.array([3, 4])], names=["x", "x"])
    with pytest.raises(arrowbridge.InvalidFileError, match='2 columns are named "x"'):
        arrowbridge.write_ipc(tmp_path / "dup.arrow", table)


def lz4_file_declaring(path, declared: int):
    """An lz4-compressed IPC file whose one buffer declares `declared` bytes uncompressed."""
    values = np.arange(1000, dtype=np.int64)
    table = pa.table({"x": values})
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.ipc.new_file(path, table.schema, options=options) as writer:
        writer.write_table(table)
    data = bytearray(path.read_bytes())
    # The 8-byte uncompressed length stands right before the lz4 frame's magic number.
    prefix = struct.pack("<q", values.nbytes) + bytes.fromhex("04224d18")
    at = data.index(prefix)
    data[at : at + 8] = struct.pack("<q", declared)
    path.write_bytes(bytes(data))
    return path


def test_decompression_respects_the_address_space_limit(tmp_path):
    # 8 GiB fits in this machine's RAM but not under `ulimit -v 3G`: reading used to abort
    # the process ("memory allocation of 8589934592 bytes failed").
    path = lz4_file_declaring(tmp_path / "big.arrow", 8 << 30)
    code = (
        "import sys, arrowbridge\n"
        "try:\n"
        f"    arrowbridge.read_ipc({str(path)!r})\n"
        "except MemoryError as e:\n"
        "    print(type(e).__name__, e)\n"
    )

    def limit_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        preexec_fn=limit_address_space,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OutOfMemoryError"), done.stdout
    assert "8589934592 bytes" in done.stdout


@pytest.mark.parametrize(
    "empty",
    [
        lambda: pa.array([], pa.int64()),
        lambda: pa.chunked_array([pa.array([], pa.float32())]),
        lambda: pl.Series("x", [], dtype=pl.Float64),
    ],
    ids=["pyarrow", "chunked", "polars"],
)
def test_an_empty_array_needs_no_alignment_and_no_copy(empty):
    x = arrowbridge.to_numpy(empty(), copy=False)
    assert x.shape == (0,)


def test_a_tensor_slice_without_its_null_rows_is_read():
    storage = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, None, 4.0, 5.0, 6.0]), 2)
    tensors = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float64(), [2]), storage)
    with pytest.raises(arrowbridge.NullValuesError):
        arrowbridge.to_numpy(tensors)
    tail = tensors.slice(2)  # the row holding the null is left out
    assert tail.storage.values.null_count == 1 and tail.null_count == 0
    np.testing.assert_array_equal(arrowbridge.to_numpy(tail), [[5.0, 6.0]])


class Exported:
    """An Arrow producer exporting `storage` under a field of our choosing."""

    def __init__(self, field, storage):
        self.field, self.storage = field, storage

    def __arrow_c_array__(self, requested_schema=None):
        _, array = self.storage.__arrow_c_array__()
        return self.field.__arrow_c_schema__(), array


def test_a_tensor_shape_too_big_for_numpy_is_a_clear_error():
    storage = pa.array([[], []], pa.list_(pa.int64(), 0))
    metadata = {
        "ARROW:extension:name": "arrow.fixed_shape_tensor",
        "ARROW:extension:metadata": json.dumps({"shape": [0, 2**63 + 5]}),
    }
    field = pa.field("t", storage.type, nullable=False, metadata=metadata)
    with pytest.raises(arrowbridge.InvalidArrowDataError, match="too big"):
        arrowbridge.to_numpy(Exported(field, storage))


def test_a_pyarrow_file_with_a_bool_column_is_read(tmp_path):
    path = tmp_path / "flags.arrow"
    table = pa.table({"flag": [True, False, True], "v": [1, 2, 3]})
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    arrays = arrowbridge.read_ipc(path)
    assert arrays["flag"].dtype == np.bool_ and arrays["flag"].tolist() == [True, False, True]
    described = {c["name"]: c for c in arrowbridge.open_ipc(path).describe()}
    assert described["flag"]["dtype"] == "bool" and described["flag"]["zero_copy"] is False


def test_describe_marks_columns_it_cannot_carry_without_reading_them(tmp_path):
    path = tmp_path / "mixed.arrow"
    arrowbridge.write_ipc(path, pa.table({"s": ["a", "b"], "v": [1.0, 2.0]}))
    described = arrowbridge.open_ipc(path).describe()
    assert described[0]["dtype"] is None and "Utf8" in described[0]["error"]
    assert described[1] == {
        "name": "v",
        "dtype": "float64",
        "shape": (2,),
        "nbytes": 16,
        "zero_copy": True,
        "error": None,
    }


def mixed_file(path):
    table = pa.table({"name": ["a", "b", "c"], "score": [0.5, 0.7, 0.9], "n": [1, 2, 3]})
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    return path


def test_columns_reads_only_the_named_columns_in_their_order(tmp_path):
    path = mixed_file(tmp_path / "mixed.arrow")
    with pytest.raises(arrowbridge.UnsupportedTypeError, match='"name"'):
        arrowbridge.read_ipc(path)
    arrays = arrowbridge.read_ipc(path, columns=["n", "score"])
    assert list(arrays) == ["n", "score"]
    assert arrays["n"].tolist() == [1, 2, 3] and arrays["score"].tolist() == [0.5, 0.7, 0.9]
    assert [list(b) for b in arrowbridge.iter_ipc(path, columns=["score"])] == [["score"]]
    reader = arrowbridge.open_ipc(path, columns=["score"])
    assert reader.names == ["score"] and reader.describe()[0]["zero_copy"] is True
    with pytest.raises(arrowbridge.InvalidFileError, match='no column "nope"'):
        arrowbridge.read_ipc(path, columns=["nope"])
    with pytest.raises(TypeError, match="list of names"):
        arrowbridge.read_ipc(path, columns="score")


def test_columns_picks_a_unique_name_out_of_a_file_with_duplicates(tmp_path):
    path = tmp_path / "dup.arrow"
    table = pa.table(
        [pa.array([1, 2]), pa.array([3, 4]), pa.array([0.5, 1.5])], names=["x", "x", "y"]
    )
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    assert arrowbridge.read_ipc(path, columns=["y"])["y"].tolist() == [0.5, 1.5]
    with pytest.raises(arrowbridge.InvalidFileError, match='2 columns are named "x"'):
        arrowbridge.read_ipc(path, columns=["x"])


def test_each_batch_is_decoded_only_when_it_is_read(tmp_path):
    # Two lz4 batches, the second one's compressed bytes corrupted (its header intact):
    # opening, describing and reading the first batch never decompress the second.
    path = tmp_path / "two.arrow"
    first, second = np.arange(1000, dtype=np.int64), np.arange(1000, 2000, dtype=np.int64)
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    table = pa.Table.from_batches([pa.record_batch({"x": first}), pa.record_batch({"x": second})])
    with pa.ipc.new_file(path, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=1000)
    data = bytearray(path.read_bytes())
    frames = [i for i in range(len(data) - 4) if data[i : i + 4] == bytes.fromhex("04224d18")]
    assert len(frames) == 2
    data[frames[1] + 12 : frames[1] + 40] = bytes(28)  # inside the second lz4 frame
    path.write_bytes(bytes(data))
    reader = arrowbridge.open_ipc(path)
    assert reader.num_batches == 2 and reader.num_rows == 2000
    assert reader.describe()[0]["shape"] == (2000,)
    np.testing.assert_array_equal(reader.read_batch(0)["x"], first)
    with pytest.raises(arrowbridge.InvalidFileError):
        reader.read_batch(1)


@pytest.mark.parametrize("fmt", ["file", "stream"])
@pytest.mark.parametrize("batches", [0, 1], ids=["no-batch", "zero-rows"])
def test_files_without_rows_read_as_empty_arrays_of_their_dtype(tmp_path, fmt, batches):
    tensor = arrowbridge.to_arrow(np.ones((2, 3), np.float32))
    schema = pa.schema([("x", pa.float64()), ("b", pa.bool_()), ("t", tensor.type)])
    empty = pa.record_batch(
        [pa.array([], pa.float64()), pa.array([], pa.bool_()), tensor[:0]], schema=schema
    )
    path = tmp_path / f"empty.{fmt}"
    open_writer = pa.ipc.new_file if fmt == "file" else pa.ipc.new_stream
    with open_writer(path, schema) as writer:
        for _ in range(batches):
            writer.write_batch(empty)
    arrays = arrowbridge.read_ipc(path)
    assert {k: (v.dtype.name, v.shape) for k, v in arrays.items()} == {
        "x": ("float64", (0,)),
        "b": ("bool", (0,)),
        "t": ("float32", (0, 3)),
    }


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_buffer_checks_accept_every_legal_layout(tmp_path, compression):
    # Writers pad buffers to 8 bytes and compress them unpadded: the checks made before
    # decoding (whole values in every typed buffer) must accept both, for every type, even
    # those arrowbridge does not carry.
    table = pa.table(
        {
            "fsb": pa.array([b"abc", b"def", b"ghi", b"jkl", b"mno"], pa.binary(3)),
            "h": pa.array(np.arange(5, dtype=np.float16)),
            "s": ["a", "bb", "c", "dd", "e"],
            "dec": pa.array([1, 2, 3, 4, 5], pa.decimal128(10, 2)),
            "x": np.arange(5.0),
        }
    )
    path = tmp_path / "types.arrow"
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_file(path, table.schema, options=options) as writer:
        writer.write_table(table)
    arrays = arrowbridge.read_ipc(path, columns=["h", "x"])
    np.testing.assert_array_equal(arrays["h"], np.arange(5, dtype=np.float16))
    np.testing.assert_array_equal(arrays["x"], np.arange(5.0))
    described = {c["name"]: c for c in arrowbridge.open_ipc(path).describe()}
    assert described["x"]["error"] is None and described["fsb"]["error"] is not None
