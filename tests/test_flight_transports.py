"""The native Flight client and the server's transports, with real servers: the form an item
was put in comes back, received columns land in one aligned buffer each, large items travel
as parallel endpoints that plain pyarrow.flight clients follow too, Unix sockets, errors
chosen by status code, and one copy of every item on the server."""

import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import free_port, rss_bytes, same_values, sample, server_process

import arrowbridge
from arrowbridge import _native

MIB = 1 << 20


class TestForms:
    def test_an_array_put_is_an_array_got(self, client):
        x = sample("float32", (4, 5))
        client.put("arr", x)
        back = client.get("arr")
        assert isinstance(back, np.ndarray)
        assert same_values(back, x)

    def test_a_dict_put_is_a_dict_got_even_with_one_entry(self, client):
        client.put("one", {"only": np.arange(3)})
        back = client.get("one")
        assert list(back) == ["only"]
        assert same_values(back["only"], np.arange(3))

    def test_a_table_put_is_a_dict_of_its_columns(self, client):
        table = pa.table({"id": np.arange(4), "v": pa.array([0.5, 1.5, 2.5, 3.5])})
        client.put("tab", table)
        back = client.get("tab")
        assert list(back) == ["id", "v"]
        assert same_values(back["v"], np.array([0.5, 1.5, 2.5, 3.5]))

    def test_the_form_is_in_the_schema_other_clients_see(self, server, client):
        client.put("seen", np.arange(3.0))
        info = flight.FlightClient(server.location).get_flight_info(
            flight.FlightDescriptor.for_path("seen")
        )
        assert info.schema.metadata[b"arrowbridge.item"] == b"array"
        # and what pyarrow's client got from the stream carries it too
        table = flight.FlightClient(server.location).do_get(flight.Ticket(b"seen")).read_all()
        assert table.schema.metadata[b"arrowbridge.item"] == b"array"

    def test_items_other_clients_put_are_dicts(self, server, client):
        table = pa.table({"x": np.arange(5, dtype=np.int32)})
        w, _ = flight.FlightClient(server.location).do_put(
            flight.FlightDescriptor.for_path("foreign"), table.schema
        )
        w.write_table(table, max_chunksize=2)  # three batches
        w.close()
        back = client.get("foreign")
        assert same_values(back["x"], np.arange(5, dtype=np.int32))


class TestLanding:
    def test_a_result_of_many_messages_is_one_aligned_writeable_array(self, server, client):
        x = sample("float64", (3 * MIB // 8 * 8 // 1024, 1024))  # 24 MiB: three messages
        client.put("many", x)
        # The server stores one buffer, and sends it in messages of 8 MiB, as any client sees.
        sent = flight.FlightClient(server.location).do_get(flight.Ticket(b"many")).read_all()
        assert [len(c) for c in sent.column("data").chunks] == [1024, 1024, 1024]
        back = client.get("many")
        assert same_values(back, x)
        assert back.flags.c_contiguous and back.flags.writeable
        assert back.ctypes.data % 64 == 0
        # One buffer that the array owns alone: arrowbridge's memory, exactly its size.
        assert isinstance(back.base, _native.ArrowMemory)
        assert back.base.nbytes == back.nbytes

    def test_a_stream_announcing_more_or_fewer_rows_than_it_sends_is_stored_as_sent(
        self, server, client
    ):
        # A table read from the server keeps the row count its stream announced in its
        # metadata; sliced or extended and sent on by pyarrow, it still stores what is sent.
        client.put("orig", np.arange(10.0))
        plain = flight.FlightClient(server.location)
        table = plain.do_get(flight.Ticket(b"orig")).read_all()
        assert table.schema.metadata[b"arrowbridge.rows"] == b"10"
        for name, rows in (("fewer", table.slice(2, 5)), ("more", pa.concat_tables([table] * 3))):
            w, _ = plain.do_put(flight.FlightDescriptor.for_path(name), rows.schema)
            w.write_table(rows)
            w.close()
            expected = np.concatenate(
                [
                    rows.column("data").chunk(i).to_numpy()
                    for i in range(rows.column("data").num_chunks)
                ]
            )
            assert same_values(client.get(name), expected)

    def test_call_results_land_the_same_way(self, client):
        x = sample("float32", (1 << 16, 64))  # 16 MiB
        out = client.call("identity", x)
        assert same_values(out, x)
        assert out.ctypes.data % 64 == 0 and isinstance(out.base, _native.ArrowMemory)


class TestEndpoints:
    def test_a_large_item_is_several_endpoints_that_pyarrow_follows(self, server, client):
        x = sample("float64", (10 * 1024, 1024))  # 80 MiB: two endpoints of 64 MiB or less
        client.put("large", x)
        info = flight.FlightClient(server.location).get_flight_info(
            flight.FlightDescriptor.for_path("large")
        )
        assert len(info.endpoints) == 2
        assert client.info("large")["endpoints"] == 2
        plain = flight.FlightClient(server.location)
        parts = [plain.do_get(e.ticket).read_all() for e in info.endpoints]
        rows = np.concatenate([arrowbridge.to_numpy(p.column("data")) for p in parts])
        assert same_values(rows, x)
        back = client.get("large")  # fetched in parallel into one array
        assert same_values(back, x)
        assert back.base.nbytes == x.nbytes

    def test_a_ticket_for_rows_past_the_end_is_out_of_range(self, server, client):
        client.put("short", np.arange(4.0))
        plain = flight.FlightClient(server.location)
        ticket = flight.Ticket(b'{"name": "short", "rows": [0, 9]}')
        with pytest.raises(pa.ArrowException, match='rows \\[0, 9\\] of "short", which has 4'):
            plain.do_get(ticket).read_all()


class TestUnixSocket:
    def test_serve_connect_and_a_plain_pyarrow_client(self, tmp_path):
        path = tmp_path / "ab.sock"
        with arrowbridge.serve(f"grpc+unix://{path}") as srv:
            assert srv.location == f"grpc+unix://{path}"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            with arrowbridge.connect(srv.location) as c:
                c.put("u", np.arange(6.0).reshape(2, 3))
                assert c.call("sum", c.stored("u"), axis=1).tolist() == [3.0, 12.0]
            # gRPC's C++ core sends the socket's path, percent-encoded, as :authority
            # ("...%2Fab.sock"), which plain h2 resets as malformed: default options work.
            plain = flight.FlightClient(srv.location)
            table = plain.do_get(flight.Ticket(b"u")).read_all()
            assert table.num_rows == 2
            listed = [info.descriptor.path[0] for info in plain.list_flights()]
            assert listed == [b"u"]
            writer, _ = plain.do_put(flight.FlightDescriptor.for_path("from-pyarrow"), table.schema)
            writer.write_table(table)
            writer.close()
            with arrowbridge.connect(srv.location) as c:
                assert c.get("from-pyarrow").shape == (2, 3)
            named = flight.FlightClient(
                srv.location, generic_options=[("grpc.default_authority", "localhost")]
            )
            assert named.do_get(flight.Ticket(b"u")).read_all().num_rows == 2
        assert not path.exists(), "the socket is removed at shutdown"

    def test_a_stale_socket_is_replaced_and_a_live_one_refused(self, tmp_path):
        path = tmp_path / "ab.sock"
        with arrowbridge.serve(f"grpc+unix://{path}"):
            with pytest.raises(arrowbridge.ServerStartError, match="listening on this socket"):
                arrowbridge.serve(f"grpc+unix://{path}")
        import socket

        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))  # a socket file nobody listens on, as a killed server leaves
        stale.close()
        with (
            arrowbridge.serve(f"grpc+unix://{path}") as srv,
            arrowbridge.connect(srv.location) as c,
        ):
            assert c.health()["status"] == "ok"

    def test_the_cli_serves_a_unix_socket(self, tmp_path):
        path = tmp_path / "cli.sock"
        proc = subprocess.Popen(
            [sys.executable, "-m", "arrowbridge", "serve", "--unix", str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert f"grpc+unix://{path}" in proc.stdout.readline()
            with arrowbridge.connect(f"grpc+unix://{path}") as c:
                c.put("x", np.arange(3))
                assert same_values(c.get("x"), np.arange(3))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 0

    @pytest.mark.parametrize(
        "location", ["grpc+unix://", "grpc+unix://host/p", "http://127.0.0.1:1", "nonsense"]
    )
    def test_bad_locations_are_clear_errors(self, location):
        with pytest.raises(arrowbridge.InvalidLocationError, match="location"):
            arrowbridge.serve(location)
        if location != "grpc+unix://host/p":
            with pytest.raises(arrowbridge.InvalidLocationError, match="location"):
                arrowbridge.connect(location)


class TestErrors:
    def test_each_failure_is_the_class_its_status_code_calls_for(self, server):
        with arrowbridge.serve(token="t") as srv:
            with (
                arrowbridge.connect(srv.location) as c,
                pytest.raises(arrowbridge.AuthenticationError),
            ):
                c.health()
        with arrowbridge.connect(server.location) as c:
            with pytest.raises(arrowbridge.RemoteNotFoundError, match='no array called "nope"'):
                c.get("nope")
            with pytest.raises(arrowbridge.RemoteInvalidError, match="kernel"):
                c.call("sum", np.arange(3), axis="x")
        dead = f"grpc://127.0.0.1:{free_port()}"
        with arrowbridge.connect(dead) as c, pytest.raises(arrowbridge.ServerUnavailableError):
            c.health()

    def test_the_errors_are_exported_from_arrowbridge(self):
        for name in ("FlightCallError", "RemoteOutOfMemoryError", "RemoteStorageError"):
            assert getattr(arrowbridge, name) is getattr(arrowbridge.errors, name)
            assert issubclass(getattr(arrowbridge, name), arrowbridge.ArrowBridgeError)


def test_the_server_holds_each_item_once():
    """Four 64 MiB puts, two of them by clients that exit right after the acknowledgement,
    each item then described, listed and used by a kernel (which used to cache a second,
    concatenated copy): the server grows by their size and a small constant."""
    with server_process() as (proc, location):
        with arrowbridge.connect(location, shm=False) as c:
            c.health()
            idle = rss_bytes(proc.pid)
            put = (
                "import sys, numpy as np, arrowbridge; "
                "arrowbridge.connect(sys.argv[1], shm=False)"
                ".put(sys.argv[2], np.ones((8192, 1024)))"
            )
            for i in range(4):
                if i % 2:
                    subprocess.run([sys.executable, "-c", put, location, f"x{i}"], check=True)
                else:
                    c.put(f"x{i}", np.ones((8192, 1024)))
                c.info(f"x{i}")
                c.call("sum", c.stored(f"x{i}"), axis=0)
            c.list()
            time.sleep(0.5)  # freed messages are returned to the OS after a short delay
            grown = rss_bytes(proc.pid) - idle
        assert grown < 4 * 64 * MIB + 64 * MIB, f"grew by {grown / MIB:.0f} MiB for 256 MiB"


def test_the_rust_client_releases_the_gil_while_data_moves(server, client):
    import threading

    x = sample("float64", (4096, 1024))  # 32 MiB
    client.put("gil", x)
    ticks = 0
    done = threading.Event()

    def tick():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.0005)

    t = threading.Thread(target=tick)
    t.start()
    try:
        for _ in range(5):
            client.get("gil")
    finally:
        done.set()
        t.join()
    assert ticks > 20, "another Python thread ran while the client received"


def test_a_connected_client_follows_a_server_restart_and_does_not_hold_its_shutdown():
    # The client's connections are driven between calls too: a server that stops is not
    # kept waiting for its grace period by an idle client, and the first call after it
    # comes back on the same address succeeds (no stale connection failing once).
    server = arrowbridge.serve("grpc://127.0.0.1:0", shm=False)
    port = int(server.location.rsplit(":", 1)[1])
    client = arrowbridge.connect(server.location, shm=False)
    assert client.health()["status"] == "ok"
    started = time.monotonic()
    server.shutdown()
    assert time.monotonic() - started < 2, "the idle client answered the server's GOAWAY"
    with arrowbridge.serve(f"grpc://127.0.0.1:{port}", shm=False):
        time.sleep(0.1)
        assert client.health()["status"] == "ok"
    client.close()
