"""Flight for every shape (arguments of different lengths, rows larger than a message, tables
without batches), servers that refuse to start with the right exception, and a shutdown
that no client can hold up."""

import errno
import signal
import socket

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import start_cli_server

import arrowbridge


@pytest.fixture(scope="module")
def client():
    with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        yield client


def test_kernel_arguments_of_different_first_axes_larger_than_a_message(client):
    # 72 MB in one argument, whose rows differ from the other's: they used to travel as one
    # row, in one message over the server's 64 MiB limit ("decoded message length too large").
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((9000, 1000)), rng.standard_normal((1000, 10))
    assert x.nbytes > 64 << 20  # the largest message the server accepts
    np.testing.assert_allclose(client.call("matmul", x, w), x @ w, rtol=1e-9)
    assert client.health()["status"] == "ok"


def test_a_single_row_larger_than_a_message_round_trips(client):
    row = np.arange(9_000_000, dtype=np.float64).reshape(1, -1)  # 72 MB in one row
    client.put("row", row)
    got = client.get("row")
    assert got.shape == row.shape and got.dtype == row.dtype
    np.testing.assert_array_equal(got, row)
    assert client.info("row")["columns"][0]["shape"] == [1, 9_000_000]


def test_a_dict_of_different_lengths_larger_than_a_message_round_trips(client):
    arrays = {
        "big": np.arange(9_000_000, dtype=np.float64),
        "small": np.arange(6, dtype=np.int32).reshape(2, 3),
        "flags": np.array([True, False, True]),
        "z": np.array([1 + 2j], np.complex64),
        "scalar": np.array(7.5),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    }
    client.put("mixed", arrays)
    got = client.get("mixed")
    assert list(got) == list(arrays)
    for name, value in arrays.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value)
    results = client.call("identity", arrays["small"], arrays["flags"])
    np.testing.assert_array_equal(results[0], arrays["small"])
    np.testing.assert_array_equal(results[1], arrays["flags"])


def test_a_table_without_batches_can_be_put(client):
    empty = pa.Table.from_batches([], schema=pa.schema([("x", pa.int64())]))
    client.put("empty", empty)
    got = client.get("empty")
    assert got["x"].dtype == np.int64 and got["x"].shape == (0,)


def test_an_address_in_use_is_an_os_error_with_its_errno():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(arrowbridge.ServerStartError, match=f"127.0.0.1:{port}") as info:
            arrowbridge.serve(f"grpc://127.0.0.1:{port}")
    assert isinstance(info.value, OSError) and info.value.errno == errno.EADDRINUSE


def test_a_data_dir_that_is_a_file_is_an_os_error_naming_it(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(arrowbridge.FileError, match=str(not_a_dir)) as info:
        arrowbridge.serve(data_dir=not_a_dir)
    assert isinstance(info.value, OSError)


def test_bad_tls_material_is_a_tls_error():
    with pytest.raises(arrowbridge.TLSConfigError, match="TLS certificate or key"):
        arrowbridge.serve(tls=(b"not a certificate", b"not a key"))


def test_an_unfinished_put_does_not_keep_the_server_from_stopping(tmp_path):
    proc, location = start_cli_server("--data-dir", tmp_path)
    try:
        client = flight.FlightClient(location)
        batch = pa.record_batch({"x": np.arange(1000.0)})
        writer, _ = client.do_put(flight.FlightDescriptor.for_path("never"), batch.schema)
        writer.write_batch(batch)  # and never done_writing(): the call stays open
        proc.send_signal(signal.SIGTERM)
        # The server gives calls under way a grace period (5 s), then cancels them.
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
