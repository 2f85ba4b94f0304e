"""Arrow Flight with real servers on loopback: our server with pyarrow.flight and our client,
our client against a pyarrow.flight server, auth, TLS, large data, faults and restarts."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import EchoServer, address, same_values, sample, start_cli_server

import arrowbridge
from arrowbridge import _native
from arrowbridge.flight import AuthenticationError, RemoteInvalidError, RemoteNotFoundError


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint32", "float16", "float64", "complex64", "datetime64[ns]"]
)
def test_put_get_round_trips(client, dtype):
    arrays = {"a": sample(dtype, (7, 3)), "b": sample(dtype, (7,), seed=2)}
    name = "rt-" + dtype.replace("[", "-").rstrip("]")
    client.put(name, arrays)
    back = client.get(name)
    for name, x in arrays.items():
        assert same_values(back[name], x)


def test_any_dict_round_trips(client):
    arrays = {"m": np.ones((2, 3)), "v": np.arange(5), "s": np.array(2.5)}
    client.put("mixed", arrays)
    back = client.get("mixed")
    for name, x in arrays.items():
        assert same_values(back[name], x)


def test_received_buffers_are_viewed_not_copied(server):
    x = sample("float64", (1000, 16))
    raw = flight.FlightClient(server.location)
    arrowbridge.connect(server.location).put("zc", {"x": x})
    table = raw.do_get(flight.Ticket(b"zc")).read_all()
    values = table["x"].chunk(0).storage.values
    received = values.buffers()[1].address + values.offset * 8
    converted = _native.stream_to_arrays(table)["x"]
    assert received % 8 == 0
    assert address(converted) == received  # the gRPC-received buffer, viewed in place
    np.testing.assert_array_equal(converted, x)


def test_list_info_delete(client):
    client.put("listed", {"e": np.zeros((4, 2), np.float32), "l": np.arange(4)})
    listed = {i["name"]: i for i in client.list()}
    assert listed["listed"]["rows"] == 4
    info = client.info("listed")
    assert {c["name"]: (c["dtype"], c["shape"]) for c in info["columns"]} == {
        "e": ("float32", [4, 2]),
        "l": ("int64", [4]),
    }
    client.delete("listed")
    with pytest.raises(RemoteNotFoundError, match="listed"):
        client.info("listed")
    with pytest.raises(RemoteNotFoundError):
        client.delete("listed")


def test_call_runs_kernels_on_sent_and_stored_arrays(client):
    a, b = sample("float64", (5, 4), 1), sample("float64", (4, 3), 2)
    np.testing.assert_allclose(client.call("matmul", a, b), a @ b)
    client.put("w", b)
    np.testing.assert_allclose(client.call("matmul", a, client.stored("w")), a @ b)
    np.testing.assert_allclose(client.call("sum", a, axis=0), a.sum(axis=0))
    ra, rb = client.call("identity", np.arange(3), np.ones((2, 2)))
    np.testing.assert_array_equal(rb, np.ones((2, 2)))
    np.testing.assert_array_equal(ra, np.arange(3))
    assert client.kernels()["matmul"].startswith("matmul(")
    assert client.health()["status"] == "ok"


def test_errors_come_back_with_clear_messages(client):
    with pytest.raises(RemoteNotFoundError, match='unknown kernel "nope"'):
        client.call("nope", np.ones(2))
    with pytest.raises(RemoteInvalidError, match="dtype int64, expected float32 or float64"):
        client.call("normalize", np.ones((2, 2), np.int64))
    with pytest.raises(RemoteNotFoundError, match='no array called "ghost"'):
        client.get("ghost")
    with pytest.raises(RemoteNotFoundError, match='no array called "ghost"'):
        client.call("sum", client.stored("ghost"))
    with pytest.raises(RemoteInvalidError, match=r'name "\.\./evil": use 1-200 letters'):
        client.put("../evil", np.ones(2))


def test_a_plain_pyarrow_flight_client_can_do_everything(server):
    raw = flight.FlightClient(server.location)
    table = pa.table(
        {"x": pa.FixedShapeTensorArray.from_numpy_ndarray(np.arange(12.0).reshape(4, 3))}
    )
    writer, reader = raw.do_put(flight.FlightDescriptor.for_path("raw"), table.schema)
    writer.write_table(table)
    writer.close()
    assert raw.do_get(flight.Ticket(b"raw")).read_all().equals(table)
    assert "raw" in [f.descriptor.path[0].decode() for f in raw.list_flights()]
    assert raw.get_schema(flight.FlightDescriptor.for_path("raw")).schema == table.schema
    command = json.dumps(
        {"kernel": "sum", "args": [{"stored": "raw"}], "params": {"axis": 1}}
    ).encode()
    writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(command))
    writer.begin(pa.schema([]))
    writer.done_writing()
    result = reader.read_all()
    writer.close()
    np.testing.assert_array_equal(result["result"].to_numpy(), [3.0, 12.0, 21.0, 30.0])
    health = json.loads(next(iter(raw.do_action(flight.Action("health", b"")))).body.to_pybytes())
    assert health["status"] == "ok"
    assert {a.type for a in raw.list_actions()} == {
        "delete",
        "undo_map",
        "maps_below",
        "delete_map",
        "list_kernels",
        "describe_kernels",
        "health",
        "shm",
    }


def test_our_client_against_a_pyarrow_flight_server():
    srv = EchoServer("grpc://127.0.0.1:0")
    try:
        c = arrowbridge.connect(f"grpc://127.0.0.1:{srv.port}")
        arrays = {"e": sample("float32", (6, 4)), "l": np.arange(6)}
        c.put("p", arrays)
        back = c.get("p")
        for name, x in arrays.items():
            assert same_values(back[name], x)
        assert c.info("p")["rows"] == 6
        assert [i["name"] for i in c.list()] == ["p"]
    finally:
        srv.shutdown()


def test_large_tensors_are_split_into_messages_and_reassembled(client):
    x = np.random.default_rng(0).standard_normal((2048, 8192)).astype(np.float32)  # 64 MiB
    client.put("big", x)
    back = client.get("big")
    assert back.shape == x.shape
    assert np.array_equal(back, x)
    np.testing.assert_allclose(
        client.call("sum", client.stored("big"), axis=0), x.sum(axis=0), rtol=1e-3
    )


class TestAuth:
    def test_a_token_is_required_and_checked(self):
        with arrowbridge.serve(token="s3cret") as srv:
            with pytest.raises(AuthenticationError, match="Bearer"):
                arrowbridge.connect(srv.location).list()
            with pytest.raises(AuthenticationError, match="wrong bearer token"):
                arrowbridge.connect(srv.location, token="guess").put("x", np.ones(2))
            good = arrowbridge.connect(srv.location, token="s3cret")
            good.put("x", np.ones(2))
            np.testing.assert_array_equal(good.get("x"), [1.0, 1.0])
            with pytest.raises(flight.FlightUnauthenticatedError):
                flight.FlightClient(srv.location).do_get(flight.Ticket(b"x")).read_all()

    def test_tls(self, tmp_path):
        key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                key,
                "-out",
                cert,
            ],
            check=True,
            capture_output=True,
        )
        with arrowbridge.serve(
            "grpc://127.0.0.1:0", tls=(cert.read_bytes(), key.read_bytes())
        ) as srv:
            assert srv.location.startswith("grpc+tls://")
            c = arrowbridge.connect(srv.location, tls_root_certs=cert.read_bytes())
            c.put("t", np.arange(3))
            np.testing.assert_array_equal(c.get("t"), np.arange(3))


class TestFaults:
    def test_garbage_and_disconnects_harm_nobody(self, server, client):
        host, port = server.location.removeprefix("grpc://").rsplit(":", 1)
        for junk in (b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096)):
            with socket.create_connection((host, int(port))) as s:
                s.sendall(junk)
        # A client that dies in the middle of a put.
        script = (
            "import numpy as np, pyarrow as pa, pyarrow.flight as fl, os\n"
            f"c = fl.FlightClient({server.location!r})\n"
            "t = pa.table({'x': np.ones(1 << 20)})\n"
            "w, r = c.do_put(fl.FlightDescriptor.for_path('torn'), t.schema)\n"
            "w.write_table(t)\n"
            "os._exit(0)\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        client.put("after", np.arange(4))
        np.testing.assert_array_equal(client.get("after"), np.arange(4))
        assert client.health()["status"] == "ok"

    @pytest.mark.parametrize(
        ("command", "message"),
        [
            (b"not json", "bad DoExchange command: expected ident"),
            (b'{"kernel": "sum", "extra": 1}', "bad DoExchange command: unknown field `extra`"),
            (b"", "DoExchange needs a descriptor whose command is JSON"),
        ],
        ids=["not-json", "unknown-field", "empty"],
    )
    def test_bad_exchange_commands(self, server, command, message):
        # Each is refused for what is wrong with the command, not for some other reason.
        raw = flight.FlightClient(server.location)
        writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(command))
        writer.begin(pa.schema([]))
        writer.done_writing()
        with pytest.raises(pa.ArrowInvalid, match=message):
            reader.read_all()

    def test_concurrent_clients(self, server):
        def work(i):
            c = arrowbridge.connect(server.location)
            for j in range(20):
                x = np.full((8, 4), float(i * 100 + j))
                c.put(f"c{i}", x)
                assert c.call("sum", c.stored(f"c{i}")) == x.sum()
                np.testing.assert_array_equal(c.get(f"c{i}"), x)
            return True

        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(work, range(16)))


def test_every_acknowledged_put_survives_kill_9(tmp_path):
    proc, location = start_cli_server("--data-dir", tmp_path)
    c = arrowbridge.connect(location)
    acked = {}
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            x = np.full((64, 128), float(i))
            try:
                c.put(f"a{i}", x)
            except arrowbridge.flight.FlightCallError:
                return  # the server was killed: this put was never acknowledged
            acked[f"a{i}"] = x
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    t.join(timeout=30)
    assert len(acked) > 3
    # The same port again: the client's location stays right.
    proc, _ = start_cli_server("--data-dir", tmp_path, port=int(location.rsplit(":", 1)[1]))
    try:
        c2 = arrowbridge.connect(location)
        served = {i["name"] for i in c2.list()}
        assert set(acked) <= served
        for name, x in acked.items():
            np.testing.assert_array_equal(c2.get(name), x)
        # A put cut short may leave a temporary file behind; it is never served.
        assert all(not n.startswith(".") for n in served)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "stopped" in out


def test_serve_stops_cleanly_on_sigint(tmp_path):
    proc, _ = start_cli_server("--data-dir", tmp_path, "--token", "t")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out
    assert Path(tmp_path).is_dir()


@pytest.mark.long
def test_arrays_over_2_gib_work(server):
    # 2.3 GiB: more than one protobuf message (2 GiB) or one gRPC message could carry.
    x = np.ones((300_000, 1024), dtype=np.float64)
    x[-1, -1] = 7.0
    c = arrowbridge.connect(server.location)
    c.put("huge", x)
    assert c.info("huge")["rows"] == 300_000
    assert c.call("sum", c.stored("huge")) == x.size - 1 + 7.0
    back = c.get("huge")
    assert back.shape == x.shape and back[-1, -1] == 7.0 and back[0, 0] == 1.0
    del back
    c.delete("huge")


def test_a_closed_client_says_so(server):
    c = arrowbridge.connect(server.location)
    c.close()
    with pytest.raises(arrowbridge.flight.FlightCallError, match="the client is closed") as err:
        c.list()
    assert not isinstance(err.value, RemoteInvalidError)
