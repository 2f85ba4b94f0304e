"""Arrow IPC files and streams from Python: exact round trips, views of the mapping,
interoperability, cross-language reads, atomic writes and bad files."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from conftest import DTYPES, address, same_values, sample

import arrowbridge
from arrowbridge import FileError, InvalidFileError, UnsupportedTypeError

ROOT = Path(__file__).resolve().parent.parent


def mapped_files(addr: int) -> list[str]:
    """The files mapped at `addr` in this process, from /proc/self/maps."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= addr < hi and len(parts) == 6 and parts[5].startswith("/"):
            found.append(parts[5])
    return found


@pytest.mark.parametrize("fmt", ["file", "stream"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_exactly_as_a_view_of_the_file(tmp_path, fmt, dtype):
    path = tmp_path / "x.arrow"
    x = sample(dtype, (6, 2, 3))
    y = sample(dtype, (6,), seed=1)
    arrowbridge.write_ipc(path, {"x": x, "y": y}, format=fmt)
    back = arrowbridge.read_ipc(path)
    assert list(back) == ["x", "y"]
    assert same_values(back["x"], x)
    assert same_values(back["y"], y)
    assert mapped_files(address(back["x"])) == [str(path)]
    assert not back["x"].flags.writeable


@pytest.mark.parametrize(
    "arrays",
    [
        {"a": np.ones((2, 3)), "b": np.arange(5), "c": np.array(7.5)},
        {"only": np.zeros((0, 4), np.float32)},
        {"scalar": np.array(3, np.int8)},
        {
            "e": sample("float32", (4, 5)),
            "f": sample("complex128", (4,)),
            "g": sample("bool", (4, 2, 2)),
        },
        {
            "t": sample("int16", (3, 4, 5)).transpose(0, 2, 1),
            "f": np.asfortranarray(sample("float64", (3, 2))),
        },
    ],
    ids=["mixed-lengths", "empty", "rank-0", "shared-axis-0", "layouts"],
)
def test_any_dict_round_trips_exactly(tmp_path, arrays):
    path = tmp_path / "d.arrow"
    arrowbridge.write_ipc(path, arrays)
    back = arrowbridge.read_ipc(path)
    assert list(back) == list(arrays)
    for name, x in arrays.items():
        assert same_values(back[name], x), name


def test_a_single_array_is_stored_as_data(tmp_path):
    arrowbridge.write_ipc(tmp_path / "a.arrow", np.arange(4.0))
    assert list(arrowbridge.read_ipc(tmp_path / "a.arrow")) == ["data"]


def test_arrays_sharing_axis_0_are_rows_for_other_readers(tmp_path):
    path = tmp_path / "rows.arrow"
    n = 50
    arrowbridge.write_ipc(path, {"embeddings": sample("float32", (n, 8)), "labels": np.arange(n)})
    table = pa.ipc.open_file(path).read_all()
    assert table.num_rows == n
    assert table.schema.field("embeddings").type == pa.fixed_shape_tensor(pa.float32(), [8])
    assert table.schema.field("labels").type == pa.int64()
    np.testing.assert_array_equal(
        table["embeddings"].combine_chunks().to_numpy_ndarray(),
        arrowbridge.read_ipc(path)["embeddings"],
    )


def test_polars_and_duckdb_read_our_files(tmp_path):
    pl = pytest.importorskip("polars", reason="polars is in requirements-dev.txt")
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in requirements-dev.txt")
    path = tmp_path / "rows.arrow"
    arrowbridge.write_ipc(
        path,
        {
            "v": np.arange(10, dtype=np.float64),
            "k": np.arange(10, dtype=np.int32),
            "e": np.ones((10, 3)),
        },
    )
    df = pl.read_ipc(path)
    assert df.shape == (10, 3)
    assert df["v"].dtype == pl.Float64
    assert df["k"].sum() == 45
    rows = pa.ipc.open_file(path).read_all()  # noqa: F841 - duckdb finds it by name
    assert duckdb.sql("select sum(v) as s, count(*) as n from rows").fetchall() == [(45.0, 10)]


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_files_round_trip_and_are_decompressed(tmp_path, compression):
    path = tmp_path / "c.arrow"
    x = np.zeros((1000, 16))
    arrowbridge.write_ipc(path, {"x": x}, compression=compression)
    assert path.stat().st_size < x.nbytes / 10
    back = arrowbridge.read_ipc(path)
    assert same_values(back["x"], x)
    assert mapped_files(address(back["x"])) == []  # decompressed into memory: a copy
    assert arrowbridge.open_ipc(path).describe()[0]["zero_copy"] is False
    assert pa.ipc.open_file(path).read_all()["x"].type == pa.fixed_shape_tensor(pa.float64(), [16])


def pyarrow_table():
    return pa.table(
        {
            "embeddings": pa.FixedShapeTensorArray.from_numpy_ndarray(sample("float32", (9, 4))),
            "labels": pa.array(np.arange(9)),
            "flags": pa.array(np.arange(9) % 2 == 0).cast(pa.bool8()),
        }
    )


@pytest.mark.parametrize(
    "writer", ["new_file", "new_stream", "feather", "feather-lz4", "feather-zstd", "chunked"]
)
def test_we_read_what_pyarrow_writes(tmp_path, writer):
    table = pyarrow_table()
    path = tmp_path / "p.arrow"
    if writer == "new_file":
        with pa.ipc.new_file(path, table.schema) as w:
            w.write_table(table)
    elif writer == "new_stream":
        with pa.ipc.new_stream(path, table.schema) as w:
            w.write_table(table)
    elif writer.startswith("feather"):
        compression = writer.split("-")[1] if "-" in writer else "uncompressed"
        feather.write_feather(table, path, compression=compression)
    else:
        with pa.ipc.new_file(path, table.schema) as w:
            w.write_table(table, max_chunksize=4)
    back = arrowbridge.read_ipc(path)
    np.testing.assert_array_equal(
        back["embeddings"], table["embeddings"].combine_chunks().to_numpy_ndarray()
    )
    np.testing.assert_array_equal(back["labels"], np.arange(9))
    np.testing.assert_array_equal(back["flags"], np.arange(9) % 2 == 0)
    if writer in ("new_file", "new_stream", "feather"):
        # pyarrow aligns buffers to 8 bytes: enough for every dtype here, so still views.
        assert mapped_files(address(back["embeddings"])) == [str(path)]


def test_batches_are_read_one_at_a_time_as_views(tmp_path):
    path = tmp_path / "b.arrow"
    table = pyarrow_table()
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table, max_chunksize=4)
    reader = arrowbridge.open_ipc(path)
    assert (reader.num_batches, reader.num_rows, reader.format) == (3, 9, "file")
    batches = list(arrowbridge.iter_ipc(path))
    assert [len(b["labels"]) for b in batches] == [4, 4, 1]
    for b in batches:
        assert mapped_files(address(b["embeddings"])) == [str(path)]
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), np.arange(9))


def test_tables_and_other_stream_producers_are_written_as_they_are(tmp_path):
    table = pyarrow_table()
    arrowbridge.write_ipc(tmp_path / "t.arrow", table)
    assert pa.ipc.open_file(tmp_path / "t.arrow").read_all().equals(table)
    arrowbridge.write_ipc(tmp_path / "rb.arrow", table.to_batches()[0], format="stream")
    assert pa.ipc.open_stream(tmp_path / "rb.arrow").read_all().equals(table)
    pl = pytest.importorskip("polars", reason="polars is in requirements-dev.txt")
    arrowbridge.write_ipc(tmp_path / "pl.arrow", pl.DataFrame({"a": [1, 2, 3]}))
    np.testing.assert_array_equal(arrowbridge.read_ipc(tmp_path / "pl.arrow")["a"], [1, 2, 3])


def test_the_mapping_lives_as_long_as_a_view(tmp_path):
    path = tmp_path / "m.arrow"
    arrowbridge.write_ipc(path, {"x": np.arange(1000.0)})
    x = arrowbridge.read_ipc(path)["x"]
    os.unlink(path)
    import gc

    gc.collect()
    assert x.sum() == 999 * 1000 / 2
    assert mapped_files(address(x)) == [f"{path} (deleted)"]


def test_mmap_false_reads_into_memory(tmp_path):
    path = tmp_path / "n.arrow"
    arrowbridge.write_ipc(path, {"x": np.arange(10)})
    x = arrowbridge.read_ipc(path, mmap=False)["x"]
    assert mapped_files(address(x)) == []
    np.testing.assert_array_equal(x, np.arange(10))


@pytest.mark.parametrize("n", [(8 << 20) // 8 + 3, (33 << 20) // 8 + 1001])
def test_mmap_false_reads_large_files_exactly(tmp_path, n):
    # Large files are read in parts by several threads: every byte lands in its place,
    # whatever the file's size.
    path = tmp_path / "big.arrow"
    x = np.random.default_rng(n).integers(0, 2**62, n)
    arrowbridge.write_ipc(path, {"x": x, "y": x[::-1].copy()})
    back = arrowbridge.read_ipc(path, mmap=False)
    assert mapped_files(address(back["x"])) == []
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], x[::-1])


class TestBadFiles:
    def test_missing_file(self, tmp_path):
        with pytest.raises(FileError, match=r"nope\.arrow") as info:
            arrowbridge.read_ipc(tmp_path / "nope.arrow")
        assert isinstance(info.value, OSError)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"", "no schema"),
            (b"GARBAGE" * 10, "bad.arrow"),
            (b"ARROW1\x00\x00\xff\xff\xff\xff", "truncated"),
        ],
    )
    def test_garbage(self, tmp_path, content, message):
        path = tmp_path / "bad.arrow"
        path.write_bytes(content)
        with pytest.raises(InvalidFileError, match=message):
            arrowbridge.read_ipc(path)

    def test_truncated_and_corrupted(self, tmp_path):
        good = tmp_path / "good.arrow"
        arrowbridge.write_ipc(good, {"x": np.arange(100.0)})
        data = good.read_bytes()
        bad = tmp_path / "bad.arrow"
        for cut in (10, len(data) // 2, len(data) - 1):
            bad.write_bytes(data[:cut])
            with pytest.raises(InvalidFileError, match=r"bad\.arrow"):
                arrowbridge.read_ipc(bad)
        corrupted = bytearray(data)
        corrupted[-10:-6] = (10**6).to_bytes(4, "little")  # footer length past the start
        bad.write_bytes(bytes(corrupted))
        with pytest.raises(InvalidFileError, match="footer"):
            arrowbridge.read_ipc(bad)

    def test_unsupported_column_types_name_the_column(self, tmp_path):
        path = tmp_path / "s.arrow"
        with pa.ipc.new_file(path, pa.schema([("name", pa.string())])) as w:
            w.write_table(pa.table({"name": ["a", "b"]}))
        with pytest.raises(UnsupportedTypeError, match=r's.arrow: field "name"'):
            arrowbridge.read_ipc(path)

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="format"):
            arrowbridge.write_ipc(tmp_path / "x", np.ones(2), format="parquet")
        with pytest.raises(ValueError, match="compression"):
            arrowbridge.write_ipc(tmp_path / "x", np.ones(2), compression="gzip")
        with pytest.raises(UnsupportedTypeError, match="cannot write int"):
            arrowbridge.write_ipc(tmp_path / "x", 3)
        with pytest.raises(FileError, match="no-such-dir"):
            arrowbridge.write_ipc(tmp_path / "no-such-dir" / "x.arrow", np.ones(2))


def test_a_crash_mid_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "precious.arrow"
    arrowbridge.write_ipc(path, {"x": np.arange(10.0)})
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import numpy as np, arrowbridge, sys
        big = np.ones((32, 1 << 20))  # 256 MiB: a write takes long enough to be killed in
        print("writing", flush=True)
        while True:
            arrowbridge.write_ipc({str(path)!r}, {{"x": big}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = path.read_bytes()
    # Either the old file or a complete new one, never a torn one.
    if after != before:
        assert arrowbridge.read_ipc(path)["x"].shape == (32, 1 << 20)
    else:
        np.testing.assert_array_equal(arrowbridge.read_ipc(path)["x"], np.arange(10.0))


def cargo_example(*args: str) -> str:
    result = subprocess.run(
        ["cargo", "run", "--quiet", "--example", "ipc_view", "--", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_a_rust_process_reads_what_python_wrote_by_mapping_it(tmp_path):
    path = tmp_path / "from_python.arrow"
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    arrowbridge.write_ipc(path, {"x": x, "n": np.arange(6, dtype=np.int64)})
    lines = dict(line.split(" ", 1) for line in cargo_example("read", str(path)).splitlines())
    assert lines["x"].startswith("float32 [6, 4] 276 ")
    addr, base, length = lines["x"].split()[-3:]
    addr, base, length = int(addr, 16), int(base, 16), int(length)
    assert base <= addr < base + length, "the Rust view points into its mapping of the file"
    assert lines["n"].startswith("int64 [6] 15 ")


def test_python_reads_what_a_rust_process_wrote(tmp_path):
    path = tmp_path / "from_rust.arrow"
    cargo_example("write", str(path))
    back = arrowbridge.read_ipc(path)
    np.testing.assert_array_equal(back["x"], np.arange(12.0).reshape(3, 4) * 0.5)
    np.testing.assert_array_equal(back["n"], np.array([1, 2, 3], np.int32))
    assert mapped_files(address(back["x"])) == [str(path)]


LIMITED_READ = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, arrowbridge

    def vm_size():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) << 10 for l in status if l.startswith("VmSize"))

    path = sys.argv[1]
    limit = vm_size() + (256 << 20)  # less than the file
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    try:
        arrowbridge.read_ipc(path, mmap=False)
        print("read")
    except arrowbridge.OutOfMemoryError as e:
        print("OutOfMemoryError", e)
    """
)


def test_a_file_larger_than_the_memory_allowed_is_an_error_not_an_abort(tmp_path):
    path = tmp_path / "big.arrow"
    arrowbridge.write_ipc(path, np.zeros(64 << 20))  # 512 MiB
    out = subprocess.run(
        [sys.executable, "-c", LIMITED_READ, str(path)], capture_output=True, text=True, timeout=120
    )
    # It aborted the process ("memory allocation of ... bytes failed").
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("OutOfMemoryError"), out.stdout
    assert "big.arrow" in out.stdout and "mmap=False" in out.stdout
