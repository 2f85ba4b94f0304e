"""Ragged data (lists of arrays, ``arrow.variable_shape_tensor``) over Flight: a list put
is a list got, through the native client (sync and asyncio), slices and streams, the
cluster client's shards, and plain pyarrow.flight clients on either end; all against real
servers on loopback."""

import asyncio
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.flight as pf
import pytest
from conftest import EchoServer, address, same_values

import arrowbridge
import arrowbridge.aio
from arrowbridge.cluster import ClusterClient, shard_bounds
from arrowbridge.errors import (
    RemoteInvalidError,
    ServerUnavailableError,
    ShapeError,
)


def images(n=50, seed=0, dtype=np.float32):
    """``n`` "images" of different heights and widths, 3 channels each."""
    rng = np.random.default_rng(seed)
    return [rng.random((1 + i % 7, 2 + i % 5, 3)).astype(dtype) for i in range(n)]


def same_list(got, expected):
    return (
        isinstance(got, list)
        and len(got) == len(expected)
        and all(same_values(g, e) for g, e in zip(got, expected, strict=True))
    )


@pytest.mark.parametrize("shm", [None, False])
def test_a_list_put_is_a_list_got(server, shm):
    data = images()
    with arrowbridge.connect(server.location, shm=shm) as client:
        client.put("imgs", data)
        info = client.info("imgs")
        assert info["rows"] == len(data)
        got = client.get("imgs")
    assert same_list(got, data)
    # Each element is a read-only view of the one received buffer, one after the other:
    # no copy per element.
    assert not got[0].flags.writeable
    for a, b in itertools.pairwise(got):
        assert address(b) == address(a) + a.nbytes


def test_the_item_has_the_canonical_type_for_plain_flight_clients(server, client):
    data = images(seed=1)
    client.put("canon", {"img": data, "label": np.arange(len(data))})
    table = pf.connect(server.location).do_get(pf.Ticket(b"canon")).read_all()
    field = table.schema.field("img")
    assert field.type.extension_name == "arrow.variable_shape_tensor"
    assert same_list(arrowbridge.to_numpy(table.column("img")), data)
    assert table.column("label").to_pylist() == list(range(len(data)))


def test_a_plain_flight_writer_put_reads_back_as_a_list(server, client):
    data = images(seed=2, dtype=np.int16)
    table = pa.table({"img": arrowbridge.to_arrow(data)})
    writer, _ = pf.connect(server.location).do_put(
        pf.FlightDescriptor.for_path("from-pyarrow"), table.schema
    )
    writer.write_table(table, max_chunksize=7)
    writer.close()
    got = client.get("from-pyarrow")
    assert same_list(got["img"], data)


def test_ragged_data_in_batches_of_a_plain_flight_server_is_got_as_one_list():
    # A pyarrow.flight server serves a table of three record batches (its chunks) and lists
    # no endpoints: every batch's rows arrive, in order, each element aligned for NumPy.
    data = images(n=30, seed=5, dtype=np.float64)
    whole = pa.record_batch({"img": arrowbridge.to_arrow(data), "n": np.arange(len(data))})
    table = pa.Table.from_batches([whole.slice(0, 7), whole.slice(7, 1), whole.slice(8)])
    srv = EchoServer("grpc://127.0.0.1:0")
    try:
        srv.tables["ragged"] = table
        with arrowbridge.connect(f"grpc://127.0.0.1:{srv.port}") as client:
            got = client.get("ragged")
    finally:
        srv.shutdown()
    assert same_list(got["img"], data)
    assert same_values(got["n"], np.arange(len(data)))
    assert all(address(a) % 8 == 0 for a in got["img"])


def test_dict_with_ragged_and_dense_columns_slices_and_streams(client):
    data = images(seed=3)
    labels = np.arange(len(data)) * 10
    client.put("mixed", {"img": data, "label": labels})
    got = client.get("mixed")
    assert same_list(got["img"], data) and same_values(got["label"], labels)

    part = client.get("mixed", rows=(5, 12), columns=["img"])
    assert list(part) == ["img"] and same_list(part["img"], data[5:12])

    batches = list(client.stream("mixed", batch_rows=8))
    assert [len(b["img"]) for b in batches] == [8] * 6 + [2]
    streamed = [a for b in batches for a in b["img"]]
    assert same_list(streamed, data)
    assert same_values(np.concatenate([b["label"] for b in batches]), labels)


def test_many_messages_and_a_large_row(client):
    # About 40 MiB in rows of up to ~9 MiB: several messages, each of whole rows.
    rng = np.random.default_rng(4)
    data = [
        rng.integers(0, 255, (n, 1024), dtype=np.uint8)
        for n in (9000, 10, 4000, 1, 9 << 10, 500, 7000)
    ]
    client.put("big", data)
    assert same_list(client.get("big"), data)


def test_a_row_larger_than_a_message_is_refused_by_name(client):
    data = [np.zeros(3, np.uint8), np.zeros(70 << 20, np.uint8)]
    with pytest.raises(ShapeError, match="row 1"):
        client.put("too-big", data)
    with pytest.raises(Exception, match="too-big"):
        client.info("too-big")


def test_shared_memory_asked_for_says_ragged_data_goes_over_grpc(server):
    with arrowbridge.connect(server.location) as client:
        client.put("r-shm", images(5))
    with arrowbridge.connect(server.location, shm=True) as client:
        with pytest.raises(ServerUnavailableError, match=r"shm=True.*ragged data"):
            client.get("r-shm")


def test_a_stored_ragged_item_is_a_kernel_argument(client):
    data = images(seed=5)
    client.put("for-kernel", data)
    sums = client.call("ragged_sum", client.stored("for-kernel"))
    assert same_values(sums, arrowbridge.call("ragged_sum", data))
    padded, mask = client.call("pad", client.stored("for-kernel"))
    expected = arrowbridge.call("pad", data)
    assert same_values(padded, expected[0]) and same_values(mask, expected[1])
    # Row by row on the server, a few elements at a time.
    parts = list(client.call_stream("ragged_sum", client.stored("for-kernel"), batch_rows=7))
    assert same_values(np.concatenate(parts), sums)
    # A kernel that does not take ragged data says so, naming the item.
    with pytest.raises(RemoteInvalidError, match=r"item .for-kernel. is ragged data"):
        client.call("sum", client.stored("for-kernel"))


def test_asyncio_client(server):
    data = images(seed=6)

    async def main():
        async with arrowbridge.aio.connect(server.location) as client:
            await client.put("aio-r", {"img": data})
            whole = await client.get("aio-r")
            streamed = [b async for b in await client.stream("aio-r", batch_rows=16)]
            return whole, streamed

    whole, streamed = asyncio.run(main())
    assert same_list(whole["img"], data)
    assert same_list([a for b in streamed for a in b["img"]], data)


def test_cluster_client_shards_by_elements():
    servers = [arrowbridge.serve() for _ in range(3)]
    try:
        client = ClusterClient([s.location for s in servers])
        data = images(31, seed=7)
        client.put("sharded-r", data)
        assert [s["rows"] for s in client.shards("sharded-r")] == [
            list(b) for b in shard_bounds(31, 3)
        ]
        assert same_list(client.get("sharded-r"), data)
        # Any Flight client reading the map follows the shards' endpoints.
        with arrowbridge.connect(servers[1].location) as one:
            assert same_list(one.get("sharded-r"), data)
        client.close()
    finally:
        for s in servers:
            s.shutdown()


def test_a_call_sends_ragged_data_to_a_ragged_kernel(client):
    data = images(seed=8, dtype=np.int32)
    expected = arrowbridge.call("ragged_sum", data)
    assert same_values(client.call("ragged_sum", data), expected)
    assert same_values(client.call("ragged_sum", arrowbridge.to_arrow(data)), expected)
    padded, mask = client.call("pad", data)
    local = arrowbridge.call("pad", data)
    assert same_values(padded, local[0]) and same_values(mask, local[1])

    async def main():
        async with arrowbridge.aio.connect(client.location) as aclient:
            return await aclient.call("ragged_sum", data)

    assert same_values(asyncio.run(main()), expected)
    # Only a ragged kernel takes ragged data, and only as its first argument.
    with pytest.raises(RemoteInvalidError, match=r"sum: argument 0 is ragged data"):
        client.call("sum", data)
    with pytest.raises(RemoteInvalidError, match=r"add: argument 1 is ragged data"):
        client.call("add", np.ones(3), data)
    with pytest.raises(arrowbridge.RemoteNotFoundError, match="unknown kernel"):
        client.call("no-such-kernel", data)


def test_a_streamed_put_carries_ragged_columns(client):
    data = images(40, seed=9)

    def batches():
        for start in range(0, 42, 7):
            yield {"img": data[start : start + 7], "label": np.arange(start, min(start + 7, 40))}
        # A slice past the end: no rows (an empty list says no type), skipped.
        yield {"img": data[40:], "label": np.arange(0)}

    client.put("streamed-r", batches())
    got = client.get("streamed-r")
    assert same_list(got["img"], data)
    assert got["label"].tolist() == list(range(40))
    # Every row has 3 channels, but a stream cannot know that of its later batches when it
    # sends the first: the streamed item declares no uniform_shape; the whole put does.
    client.put("whole-r", {"img": data})
    assert "uniform_shape=[null,null,3]" in str(client.info("whole-r")["schema"])
    assert "uniform_shape" not in str(client.info("streamed-r")["schema"])

    # A later batch of another element type or rank is refused by its index; nothing stored.
    with pytest.raises(ShapeError, match="batch 1: its columns"):
        client.put("streamed-bad", iter([data[:2], [a.astype(np.float64) for a in data[2:4]]]))
    with pytest.raises(arrowbridge.RemoteNotFoundError):
        client.info("streamed-bad")


def test_a_cluster_client_shards_a_ragged_stream():
    servers = [arrowbridge.serve() for _ in range(2)]
    try:
        client = ClusterClient([s.location for s in servers])
        data = images(30, seed=10)
        client.put("sharded-stream", (data[i : i + 5] for i in range(0, 30, 5)), shard_bytes=1)
        assert len(client.shards("sharded-stream")) == 6
        assert same_list(client.get("sharded-stream"), data)
        client.close()
    finally:
        for s in servers:
            s.shutdown()
