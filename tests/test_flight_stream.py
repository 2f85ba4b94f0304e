"""Flight beyond memory: reading items as streams of batches and slices, and putting streams
of batches. Every test runs real servers on loopback; memory is read from /proc."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import rss_bytes, same_values, server_process, start_cli_server

import arrowbridge
import arrowbridge.aio
from arrowbridge.cluster import ClusterClient


@pytest.fixture
def client():
    with arrowbridge.serve() as server, arrowbridge.connect(server.location, shm=False) as c:
        yield c


@pytest.fixture
def remote(tmp_path):
    """A client of a server in its own process (so that memory is measured per side)."""
    proc, location = start_cli_server("--data-dir", tmp_path / "data")
    try:
        with arrowbridge.connect(location) as c:
            yield c, proc.pid
    finally:
        proc.terminate()
        proc.wait()


class TestStream:
    def test_batches_cover_the_rows_in_order_in_the_items_form(self, client):
        x = np.arange(50_000, dtype=np.float32).reshape(-1, 5)
        client.put("x", x)
        batches = list(client.stream("x", batch_rows=3_000))
        assert [len(b) for b in batches] == [3_000] * 3 + [1_000]
        assert np.array_equal(np.concatenate(batches), x)
        for b in batches:
            assert isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape[1:] == (5,)
            assert b.flags.c_contiguous and b.ctypes.data % 64 == 0

    def test_a_dict_streams_as_dicts_with_rows_and_columns_selected(self, client):
        table = {"id": np.arange(100), "vec": np.arange(300.0).reshape(100, 3)}
        client.put("t", table)
        with client.stream("t", columns=["vec", "id"], rows=(10, 55), batch_rows=20) as s:
            assert s.rows == 45
            batches = list(s)
        assert [list(b) for b in batches] == [["vec", "id"]] * 3
        assert [len(b["id"]) for b in batches] == [20, 20, 5]
        assert np.array_equal(np.concatenate([b["id"] for b in batches]), np.arange(10, 55))
        assert np.array_equal(np.concatenate([b["vec"] for b in batches]), table["vec"][10:55])

    def test_default_batches_are_one_message_each(self, client):
        x = np.zeros((3 << 20, 2), np.float64)  # 48 MiB, rows of 16 bytes
        client.put("z", x)
        sizes = [b.nbytes for b in client.stream("z")]
        assert sum(sizes) == x.nbytes
        assert max(sizes) == 8 << 20

    def test_an_item_another_writer_put_in_many_batches(self, client):
        schema = pa.schema([("a", pa.int64()), ("b", pa.float32())])
        plain = flight.FlightClient(client.location)
        writer, _ = plain.do_put(flight.FlightDescriptor.for_path("p"), schema)
        for i in range(7):
            writer.write_batch(
                pa.record_batch(
                    [pa.array(np.arange(i * 10, i * 10 + 10)), pa.array(np.ones(10, np.float32))],
                    schema=schema,
                )
            )
        writer.close()
        got = list(client.stream("p", batch_rows=25, columns=["a"]))
        assert [len(b["a"]) for b in got] == [25, 25, 20]
        assert np.array_equal(np.concatenate([b["a"] for b in got]), np.arange(70))

    def test_a_sharded_cluster_item_streams_shard_by_shard(self):
        with (
            arrowbridge.serve() as a,
            arrowbridge.serve() as b,
            arrowbridge.serve() as c,
            ClusterClient([a.location, b.location, c.location], shm=False) as cluster,
        ):
            x = np.arange(9_000).reshape(-1, 3)
            cluster.put("s", x, shards=3)
            batches = list(cluster.stream("s", batch_rows=700))
            assert np.array_equal(np.concatenate(batches), x)
            # Batches never cross a shard: 1,000 rows each, in 700 + 300.
            assert [len(b) for b in batches] == [700, 300] * 3
            with arrowbridge.connect(b.location, shm=False) as one:
                assert np.array_equal(one.get("s", rows=(900, 1_100)), x[900:1_100])
            # A slice from the cluster client reads the shards that hold it.
            assert np.array_equal(cluster.get("s", rows=(900, 2_100)), x[900:2_100])
            cluster.put("d", {"a": np.arange(6), "b": np.ones(6)}, shards=2)
            assert list(cluster.get("d", columns=["b"], rows=(2, 5))) == ["b"]

    @pytest.mark.parametrize("replication", [1, 2])
    def test_a_cluster_stream_of_a_replaced_item_says_so(self, replication):
        # With replicas, every replica answers that the version is gone: the item was
        # replaced, not unreachable.
        with (
            arrowbridge.serve() as a,
            arrowbridge.serve() as b,
            ClusterClient([a.location, b.location], shm=False, replication=replication) as cluster,
        ):
            cluster.put("s", np.arange(400_000), shards=2)
            stream = cluster.stream("s", batch_rows=10_000)
            assert next(stream).tolist() == list(range(10_000))
            # The put deletes the shards of the version the stream reads: the second shard's
            # batches, not fetched yet, cannot be read, and the error says why.
            cluster.put("s", np.arange(400_000) + 1, shards=2)
            with pytest.raises(arrowbridge.ItemReplacedError, match="replaced or deleted"):
                for _ in stream:
                    pass

    def test_slices_of_get(self, client):
        client.put("m", np.arange(20).reshape(10, 2))
        assert client.get("m", rows=(3, 5)).tolist() == [[6, 7], [8, 9]]
        assert client.get("m", rows=(4, 4)).shape == (0, 2)
        client.put("d", {"a": np.arange(4), "b": np.ones(4)})
        assert list(client.get("d", columns=["b"])) == ["b"]

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"columns": ["nope"]}, 'no column "nope"; its columns are \\["a", "b"\\]'),
            ({"rows": (2, 9)}, "rows \\(2, 9\\) are not within its 4 rows"),
            ({"rows": (3, 1)}, "0 <= start <= end"),
            ({"rows": (-1, 2)}, "0 <= start <= end"),
            ({"rows": (0, 2**64)}, "end < 2\\*\\*63"),
            ({"columns": "a"}, "sequence of column names"),
        ],
    )
    def test_bad_selections_are_refused_by_name(self, client, kwargs, match):
        client.put("d", {"a": np.arange(4), "b": np.ones(4)})
        with pytest.raises(arrowbridge.ShapeError, match=match):
            client.get("d", **kwargs)
        with pytest.raises(arrowbridge.ShapeError, match=match):
            list(client.stream("d", **kwargs))

    @pytest.mark.parametrize("batch_rows", [0, -3, 2.5, True])
    def test_bad_batch_rows_are_refused(self, client, batch_rows):
        client.put("x", np.arange(4))
        with pytest.raises(arrowbridge.ShapeError, match="batch_rows"):
            client.stream("x", batch_rows=batch_rows)

    def test_arrays_of_different_lengths_stream_whole(self, client):
        client.put("f", {"a": np.arange(3), "b": np.arange(5.0)})
        (whole,) = list(client.stream("f"))
        assert whole["a"].tolist() == [0, 1, 2] and whole["b"].tolist() == [0, 1, 2, 3, 4]
        with pytest.raises(arrowbridge.ShapeError, match="different lengths"):
            client.get("f", rows=(0, 1))

    def test_a_stream_reads_one_version_or_says_it_is_gone(self, client):
        old = np.zeros((4 << 20, 2), np.float32)  # 32 MiB: past the grace kept for small items
        client.put("v", old)
        stream = client.stream("v", batch_rows=1 << 16)  # 64 batches
        got = [next(stream)]
        client.put("v", np.ones_like(old))
        with pytest.raises(arrowbridge.ItemReplacedError):
            for batch in stream:
                got.append(batch)
        assert all(not b.any() for b in got), "every batch read is of the first version"
        assert len(got) < 64

    def test_memory_stays_at_a_few_batches(self, remote):
        client, _ = remote
        client.put("big", (np.full((1 << 20, 8), i, np.float64) for i in range(32)))  # 2 GiB
        before = rss_bytes()
        peak = before
        rows = 0
        for batch in client.stream("big"):
            rows += len(batch)
            peak = max(peak, rss_bytes())
        assert rows == 32 << 20
        assert peak - before < 96 << 20, f"the client grew by {(peak - before) >> 20} MiB"


class TestStreamedPut:
    def test_a_generator_of_arrays_is_one_item(self, client):
        client.put("g", (np.full((1_000, 4), i, np.float32) for i in range(5)))
        got = client.get("g")
        assert got.shape == (5_000, 4) and got[4_500, 0] == 4
        info = client.info("g")
        assert info["rows"] == 5_000

    @pytest.mark.parametrize("rows", [0, 2_500, 5_000, 12_000])
    def test_a_stream_replacing_an_item_stores_its_own_rows(self, client, rows):
        # The server sets aside the replaced item's 5,000 rows for a stream of its columns:
        # a shorter stream keeps only its rows, a longer one grows past them.
        client.put("r", np.zeros((5_000, 4), np.float32))
        batches = [np.full((min(1_000, rows - i), 4), i, np.float32) for i in range(0, rows, 1_000)]
        client.put("r", iter(batches or [np.zeros((0, 4), np.float32)]))
        got = client.get("r")
        assert got.shape == (rows, 4)
        assert same_values(got, np.concatenate(batches or [np.zeros((0, 4), np.float32)]))
        assert client.info("r")["bytes"] == rows * 16
        # Other columns: nothing set aside, the stream is stored as sent.
        client.put("r", iter([np.arange(3.0), np.arange(2.0)]))
        assert same_values(client.get("r"), np.array([0.0, 1, 2, 0, 1]))

    def test_a_generator_that_refills_one_buffer_puts_every_batch(self, client):
        # Data loaders fill one buffer per batch. Each batch's messages view the buffer, so
        # a send returns only once the connection has written them; before, refilled
        # buffers overwrote batches still queued (batch 0 arrived holding batch 3's rows).
        buf = np.empty((1 << 16, 16))  # 8 MiB a batch: messages queue behind the socket

        def refilled():
            for i in range(12):
                buf[:] = i
                yield {"x": buf, "id": np.full(len(buf), i)}

        client.put("refilled", refilled())
        got = client.get("refilled")
        starts = got["x"][:: len(buf), 0]
        assert starts.tolist() == list(range(12))
        assert (got["x"] == np.repeat(got["id"], 16).reshape(-1, 16)).all()

        async def main():
            async with arrowbridge.aio.connect(client.location) as aclient:
                await aclient.put("refilled-aio", refilled())
                return await aclient.get("refilled-aio")

        got = asyncio.run(main())
        assert (got["x"] == np.repeat(got["id"], 16).reshape(-1, 16)).all()
        assert np.unique(got["id"]).tolist() == list(range(12))

    def test_dicts_readers_and_ipc_batches(self, client, tmp_path):
        client.put("d", ({"id": np.arange(i, i + 2), "x": np.ones((2, 3))} for i in (0, 2, 4)))
        got = client.get("d")
        assert got["id"].tolist() == [0, 1, 2, 3, 4, 5] and got["x"].shape == (6, 3)

        schema = pa.schema([("a", pa.int64())])
        reader = pa.RecordBatchReader.from_batches(
            schema, [pa.record_batch({"a": [1, 2]}), pa.record_batch({"a": [3]})]
        )
        client.put("r", reader)
        assert client.get("r")["a"].tolist() == [1, 2, 3]

        path = tmp_path / "batches.arrow"
        table = pa.Table.from_batches(
            [pa.record_batch({"k": np.arange(5) + 5 * i}) for i in range(4)]
        )
        arrowbridge.write_ipc(path, table)
        client.put("f", arrowbridge.iter_ipc(path))
        assert client.get("f")["k"].tolist() == list(range(20))

    def test_a_plain_pyarrow_client_reads_a_streamed_item(self, client):
        client.put("g", ({"v": np.arange(i * 3, i * 3 + 3)} for i in range(4)))
        plain = flight.FlightClient(client.location)
        info = plain.get_flight_info(flight.FlightDescriptor.for_path("g"))
        table = pa.concat_tables(plain.do_get(e.ticket).read_all() for e in info.endpoints)
        assert table.column("v").to_pylist() == list(range(12))

    def test_the_item_appears_only_when_the_stream_ends(self, client):
        client.put("a", np.zeros(3))
        seen = []

        def batches():
            for i in range(3):
                seen.append(client.get("a").tolist())
                yield np.full(2, i + 1.0)

        client.put("a", batches())
        assert seen == [[0.0, 0.0, 0.0]] * 3
        assert client.get("a").tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]

    def test_a_stream_that_raises_stores_nothing(self, client):
        client.put("a", np.arange(3.0))

        def broken():
            yield np.zeros(100_000)
            yield np.zeros(100_000)
            raise RuntimeError("the source failed")

        with pytest.raises(RuntimeError, match="the source failed"):
            client.put("a", broken())
        with pytest.raises(RuntimeError):
            client.put("new", broken())
        assert client.get("a").tolist() == [0.0, 1.0, 2.0]
        assert [i["name"] for i in client.list()] == ["a"]

    def test_a_batch_that_does_not_match_the_first_is_refused_by_index(self, client):
        def mixed():
            yield np.zeros((2, 3), np.float32)
            yield np.zeros((2, 3), np.float32)
            yield np.zeros((2, 4), np.float32)

        with pytest.raises(arrowbridge.ShapeError, match="batch 2: its columns"):
            client.put("m", mixed())
        with pytest.raises(arrowbridge.ShapeError, match="batch 1 is a dict, the first was a"):
            client.put("m", iter([np.zeros(2), {"a": np.zeros(2)}]))
        with pytest.raises(arrowbridge.ShapeError, match="share their first axis"):
            client.put("m", iter([{"a": np.zeros(2), "b": np.zeros(3)}]))
        with pytest.raises(arrowbridge.ShapeError, match="no batches"):
            client.put("m", iter([]))
        assert client.list() == []

    def test_memory_stays_constant_on_both_sides_for_a_large_stream(self, remote, tmp_path):
        client, server_pid = remote
        block = np.ones((1 << 20, 2), np.float64)  # 16 MiB, the same block each time
        before, server_before = rss_bytes(), rss_bytes(server_pid, "RssAnon")
        peak, server_peak = [before], [server_before]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], rss_bytes())
                server_peak[0] = max(server_peak[0], rss_bytes(server_pid, "RssAnon"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            client.put("big", (block for _ in range(64)))  # 1 GiB
        finally:
            stop.set()
            sampler.join()
        assert client.info("big")["rows"] == 64 << 20
        assert peak[0] - before < 96 << 20, f"the client grew by {(peak[0] - before) >> 20} MiB"
        # The server wrote the batches to the item's file as they came (a data directory).
        grew = server_peak[0] - server_before
        assert grew < 128 << 20, f"the server grew by {grew >> 20} MiB"
        assert (tmp_path / "data" / "big.arrow").stat().st_size > 1 << 30


class TestWhatAHostilePassFound:
    def test_a_streamed_put_past_the_budget_is_refused_as_it_comes(self):
        pulled = []

        def batches():
            for i in range(128):  # 1 GiB in all
                pulled.append(i)
                yield np.ones(1 << 20)

        with (
            arrowbridge.serve(max_bytes=64 << 20) as server,
            arrowbridge.connect(server.location, shm=False) as client,
        ):
            with pytest.raises(arrowbridge.RemoteOutOfMemoryError, match="budget"):
                client.put("big", batches())
            assert len(pulled) < 32, f"{len(pulled)} batches of 8 MiB were taken"
            assert client.list() == []

    def test_a_put_without_a_name_is_refused_at_its_first_message(self, client):
        # Refused before its batches are received: a server could not charge them to its
        # budget as they arrive, with no item to charge them to.
        plain = flight.FlightClient(client.location)
        schema = pa.schema([("a", pa.float64())])
        batch = pa.record_batch({"a": np.zeros(1 << 20)})  # 8 MiB
        options = flight.FlightCallOptions(timeout=30)
        descriptor = flight.FlightDescriptor.for_command(b"no name")
        writer, _ = plain.do_put(descriptor, schema, options=options)
        sent = 0
        try:
            for _ in range(128):  # 1 GiB, if the server read it all
                writer.write_batch(batch)
                sent += 1
        except (flight.FlightError, pa.ArrowException, OSError):
            pass  # the stream was refused: the server's reason comes with its end
        with pytest.raises(pa.ArrowInvalid, match="descriptor with a path"):
            writer.close()
        assert sent < 128
        assert client.list() == []

    def test_scalars_are_not_rows(self, client):
        with pytest.raises(arrowbridge.ShapeError, match="0-d array"):
            client.put("k", iter([np.float64(1), np.float64(2)]))
        assert client.list() == []

    def test_columns_may_be_any_iterable_but_not_repeat(self, client):
        client.put("t", {"a": np.arange(3), "b": np.ones(3)})
        assert list(client.get("t", columns=(c for c in ["b"]))) == ["b"]
        with pytest.raises(arrowbridge.ShapeError, match="'a' more than once"):
            client.get("t", columns=["a", "a"])

    def test_reading_a_stream_closed_before_its_end_raises(self, client):
        client.put("x", np.arange(100_000))
        stream = client.stream("x", batch_rows=1_000)
        next(stream)
        threading.Thread(target=stream.close).start()
        with pytest.raises(arrowbridge.FlightCallError, match="closed before its end"):
            for _ in stream:
                pass

    def test_a_stream_of_tiny_batches_holds_a_few_of_them(self, client):
        client.put("x", np.arange(20_000))
        stream = client.stream("x", batch_rows=1)
        assert next(stream).tolist() == [0]
        # The pieces of 20,000 batches are cut as they are fetched, not planned up front:
        # memory stays flat while the stream is read.
        before = rss_bytes()
        rows = 1 + sum(len(b) for b in stream)
        assert rows == 20_000
        assert rss_bytes() - before < 16 << 20


# -- a data directory: items served from their files --------------------------------------


def test_a_data_dir_server_serves_items_from_their_files_not_its_memory(tmp_path):
    x = np.ones((8192, 1024))  # 64 MiB
    budget = 100 << 20
    with server_process("--data-dir", str(tmp_path), "--max-bytes", str(budget)) as (proc, loc):
        with arrowbridge.connect(loc, shm=False) as c, arrowbridge.connect(loc) as local:
            before = rss_bytes(proc.pid, "RssAnon")
            peak, done = [0], threading.Event()

            def sample():
                while not done.wait(0.01):
                    peak[0] = max(peak[0], rss_bytes(proc.pid, "RssAnon") - before)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                # 640 MiB of items on a server whose budget is 100 MiB: each put is written
                # to its file as it arrives and served from it; the server's own memory
                # holds a few messages.
                for i in range(4):
                    c.put(f"x{i}", x + i)
                c.put("big", np.ones((16384, 1024)))  # 128 MiB in one put
                c.put("gen", (np.full((1024, 1024), i, np.float64) for i in range(32)))
            finally:
                done.set()
                sampler.join()
            assert peak[0] < 128 << 20, f"the server's memory grew by {peak[0] >> 20} MiB"
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert all(str(tmp_path / f"x{i}.arrow") in maps for i in range(4))
            assert c.info("big")["rows"] == 16384 and c.info("gen")["rows"] == 32 * 1024
            # Read over gRPC, in a stream, and over shared memory (a copy made per read)...
            for i in range(4):
                assert same_values(c.get(f"x{i}"), x + i)
            assert [int(b[0, 0]) for b in c.stream("gen", batch_rows=1024)] == list(range(32))
            got = local.get("x2", rows=(10, 20))
            assert same_values(got, x[10:20] + 2)
            assert same_values(local.get("x1"), x + 1)
            # ...and a replaced item's file is served from the new one.
            c.put("x0", x[:5] * 7)
            assert same_values(c.get("x0"), x[:5] * 7)

            # A stream that fails part-way stores nothing and leaves no file behind.
            def failing():
                yield x
                raise OSError("the source broke")

            with pytest.raises(OSError, match="the source broke"):
                c.put("x1", failing())
            assert same_values(c.get("x1"), x + 1)
        names = ["big.arrow", "gen.arrow", *(f"x{i}.arrow" for i in range(4))]
        assert sorted(p.name for p in tmp_path.iterdir()) == names


# -- kernels batch by batch ---------------------------------------------------------------


class TestCallStream:
    def test_a_row_wise_kernel_on_a_stored_item_yields_each_batchs_rows(self, client):
        x = np.random.default_rng(0).standard_normal((1000, 4))
        client.put("x", x)
        batches = list(client.call_stream("normalize", client.stored("x"), batch_rows=300))
        assert [len(b) for b in batches] == [300, 300, 300, 100]
        assert np.allclose(np.concatenate(batches), client.call("normalize", x))
        # Other arguments go whole with every batch; stored ones are named.
        client.put("w", np.ones(4))
        added = client.call_stream("add", client.stored("x"), client.stored("w"), batch_rows=512)
        assert np.array_equal(np.concatenate(list(added)), x + 1)

    def test_a_reduction_combines_its_partials_batch_by_batch(self, client):
        x = np.arange(12.0).reshape(6, 2)
        client.put("x", x)
        assert [
            r.tolist() for r in client.call_stream("sum", client.stored("x"), batch_rows=4)
        ] == [x.sum()]
        by_column = list(client.call_stream("sum", client.stored("x"), batch_rows=4, axis=0))
        assert [r.tolist() for r in by_column] == [x.sum(axis=0).tolist()]
        # Over axis 1 it keeps rows apart: row-wise.
        by_row = list(client.call_stream("sum", client.stored("x"), batch_rows=4, axis=1))
        assert np.array_equal(np.concatenate(by_row), x.sum(axis=1))

    def test_a_stream_of_arrays_goes_batch_by_batch_both_ways(self, client):
        batches = (np.full((100, 3), i, np.float32) for i in range(5))
        results = list(client.call_stream("add", batches, np.ones(3, np.float32)))
        assert [r[0, 0] for r in results] == [1, 2, 3, 4, 5]
        total = client.call_stream("sum", iter([np.arange(3), np.arange(3)]))
        assert [t.tolist() for t in total] == [6]
        assert list(client.call_stream("sum", iter([]))) == []

    def test_out_stores_the_result_batch_by_batch(self, client):
        x = np.arange(20.0).reshape(10, 2)
        client.put("x", x)
        assert client.call("add", client.stored("x"), np.ones(2), out="y") is None
        assert np.array_equal(client.get("y"), x + 1)

    def test_a_stream_reads_one_version(self, client):
        x = np.zeros((8192, 1024))  # 64 MiB: a replaced version is not kept for readers
        client.put("x", x)
        results = client.call_stream("identity", client.stored("x"), batch_rows=1024)
        assert len(next(results)) == 1024
        client.put("x", np.ones((8192, 1024)))
        with pytest.raises(arrowbridge.ItemReplacedError, match="was replaced"):
            next(results)

    def test_what_cannot_be_streamed_says_why(self, client):
        client.put("x", np.arange(6.0).reshape(3, 2))
        with pytest.raises(arrowbridge.NotDistributableError, match="'pad'"):
            client.call_stream("pad", client.stored("x"))
        with pytest.raises(arrowbridge.UnknownKernelError, match="'nope'"):
            client.call_stream("nope", client.stored("x"))
        with pytest.raises(arrowbridge.ShapeError, match="not ndarray"):
            client.call_stream("identity", np.arange(3))
        with pytest.raises(arrowbridge.ShapeError, match="batch_rows must be an int >= 1"):
            client.call_stream("identity", client.stored("x"), batch_rows=0)
        columns = iter([{"a": np.arange(2), "b": np.arange(2)}])
        with pytest.raises(arrowbridge.ShapeError, match="batch 0 has columns"):
            list(client.call_stream("identity", columns))
        with pytest.raises(arrowbridge.RemoteNotFoundError):
            client.call_stream("identity", client.stored("missing"))
        # A row range past the item's end is refused by the server, naming it.
        with pytest.raises(arrowbridge.RemoteInvalidError, match=r"rows \[2, 9\) of \"x\""):
            client._native.call("identity", [("stored_rows", ("x", None, 2, 9))])
