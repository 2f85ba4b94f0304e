"""What writing must never do: lose a file's mode or its symlink, fail on a legal name, write
batches of the wrong type, or store masked values as valid data."""

import os
import stat

import numpy as np
import pyarrow as pa
import pytest

import arrowbridge


def test_rewriting_a_file_keeps_its_permission_bits(tmp_path):
    path = tmp_path / "private.arrow"
    arrowbridge.write_ipc(path, np.arange(3))
    os.chmod(path, 0o600)
    arrowbridge.write_ipc(path, np.arange(4))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o640)
    arrowbridge.write_ipc(path, {"x": np.arange(5)}, format="stream", compression="zstd")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert arrowbridge.read_ipc(path)["x"].tolist() == [0, 1, 2, 3, 4]


def test_a_replaced_large_file_is_released_soon_after(tmp_path):
    # The file a write replaces is closed on another thread (releasing its pages need not
    # delay the writer); it must not stay open.
    import time

    path = tmp_path / "big.arrow"
    arrowbridge.write_ipc(path, np.zeros(1 << 18))  # 2 MiB
    arrowbridge.write_ipc(path, np.ones(1 << 18))
    assert arrowbridge.read_ipc(path)["data"].sum() == 1 << 18

    def replaced_still_open():
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the descriptor listdir itself used
                pass
        return f"{path} (deleted)" in targets

    deadline = time.monotonic() + 5
    while replaced_still_open():
        assert time.monotonic() < deadline, "the replaced file is still open"
        time.sleep(0.01)


def test_writing_through_a_symlink_replaces_the_file_it_points_to(tmp_path):
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "real.arrow"
    arrowbridge.write_ipc(target, np.arange(3))
    link = tmp_path / "link.arrow"
    link.symlink_to(os.path.join("data", "real.arrow"))  # relative, as ln -s makes them
    arrowbridge.write_ipc(link, np.arange(10.0))
    assert link.is_symlink()
    assert arrowbridge.read_ipc(target)["data"].tolist() == list(np.arange(10.0))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["real.arrow"]


def test_a_file_name_of_246_bytes_can_be_written(tmp_path):
    path = tmp_path / ("n" * 240 + ".arrow")
    arrowbridge.write_ipc(path, np.arange(3))
    assert arrowbridge.read_ipc(path)["data"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == [path.name]


def test_a_stream_whose_batch_does_not_match_its_schema_is_refused(tmp_path):
    schema = pa.schema([("x", pa.float64())])
    good = pa.record_batch([pa.array([1.0, 2.0])], schema=schema)
    lying = pa.record_batch([pa.array([3, 4], pa.int64())], names=["x"])
    reader = pa.RecordBatchReader.from_batches(schema, [good, lying])
    path = tmp_path / "x.arrow"
    arrowbridge.write_ipc(path, np.arange(2.0))
    with pytest.raises(arrowbridge.InvalidArrowDataError, match="batch 1 has schema"):
        arrowbridge.write_ipc(path, reader)
    # Nothing was written: the previous file is intact and no temporary file is left.
    assert arrowbridge.read_ipc(path)["data"].tolist() == [0.0, 1.0]
    assert os.listdir(tmp_path) == ["x.arrow"]


MASKED = np.ma.masked_array([1.0, 1e9, 3.0], mask=[0, 1, 0])


@pytest.mark.parametrize(
    "use",
    [
        lambda x, _: arrowbridge.call("sum", x),
        lambda x, _: arrowbridge.to_arrow(x),
        lambda x, tmp: arrowbridge.write_ipc(tmp / "m.arrow", {"m": x}),
        lambda x, tmp: arrowbridge.write_ipc(tmp / "m.arrow", x),
    ],
    ids=["call", "to_arrow", "write_ipc-dict", "write_ipc-array"],
)
def test_a_masked_array_with_masked_values_is_refused(use, tmp_path):
    with pytest.raises(arrowbridge.NullValuesError, match="masked array of shape \\(3,\\) has 1"):
        use(MASKED, tmp_path)
    assert not (tmp_path / "m.arrow").exists()


def test_a_masked_array_is_refused_by_a_flight_put_and_call():
    with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        with pytest.raises(arrowbridge.NullValuesError):
            client.put("m", MASKED)
        with pytest.raises(arrowbridge.NullValuesError):
            client.call("sum", MASKED)
        assert client.list() == []


def test_a_masked_array_without_masked_values_is_its_data():
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 0, 0])
    assert arrowbridge.call("sum", x) == 6.0
    assert arrowbridge.to_arrow(x).to_pylist() == [1.0, 2.0, 3.0]
