"""AsyncClusterClient against real Flight servers on loopback: the same items as the blocking
ClusterClient (each reads what the other put), fan-outs as concurrent calls on one event loop
with no thread per call, replicas standing in for servers that are gone, atomic puts that
fail or are cancelled, and streams sharded as they come."""

import asyncio
import contextlib
import os
import time

import numpy as np
import pytest
from test_sharded import cli_server, counts, held

import arrowbridge
import arrowbridge.aio
from arrowbridge.cluster import AsyncClusterClient, ClusterClient


def run(main):
    """Runs the coroutine `main` in a fresh loop, failing it (not hanging) past 60 s."""
    return asyncio.run(asyncio.wait_for(main, 60))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_each_client_reads_what_the_other_put(servers):
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    pair = {"id": np.arange(1000), "vec": x}
    locations = [s.location for s in servers]

    async def main():
        async with AsyncClusterClient(locations) as cluster:
            await cluster.put("x", x)
            await cluster.put("pair", pair, shards=2)
            with ClusterClient(locations) as blocking:
                blocking.put("y", x[::-1].copy(), shards=3)
                assert np.array_equal(blocking.get("x"), x)
                assert [s["rows"] for s in blocking.shards("pair")] == [[0, 500], [500, 1000]]
            return (
                await cluster.get("x"),
                await cluster.get("pair", columns=["vec"], rows=(250, 750)),
                await cluster.get("y"),
                await cluster.info("x"),
                [item["name"] for item in await cluster.list()],
                [s["locations"] for s in await cluster.shards("x")],
            )

    got, part, y, info, names, placed = run(main())
    assert got.dtype == x.dtype and np.array_equal(got, x) and got.flags.c_contiguous
    assert np.array_equal(part["vec"], x[250:750])
    assert np.array_equal(y, x[::-1])
    assert info["rows"] == 1000 and info["shards"] == 3
    assert names == ["pair", "x", "y"]  # sharded items once each, their shards not listed
    assert placed == [[servers[i].location] for i in range(3)]


def test_kernels_run_on_the_shards_at_once_and_combine_as_declared(servers, plugin):
    x = np.arange(300.0).reshape(100, 3)
    locations = [s.location for s in servers]

    async def main():
        async with AsyncClusterClient(locations) as cluster:
            await cluster.put("x", x)
            await cluster.put("row", np.array([10.0, 20.0, 30.0]))
            before = threads()
            # Row-wise (concatenated in row order), a reduction (partials added), and a
            # second stored argument, fetched and sent whole; all at once on one loop.
            normalized, total, summed, added = await asyncio.gather(
                cluster.call("normalize", cluster.stored("x")),
                cluster.call("sum", cluster.stored("x")),
                cluster.call("sum", cluster.stored("x"), axis=0),
                cluster.call("add", cluster.stored("x"), cluster.stored("row")),
            )
            grew = threads() - before
            with pytest.raises(arrowbridge.NotDistributableError, match=r"zscore.*gather=True"):
                await cluster.call("zscore", cluster.stored("x"))
            gathered = await cluster.call("zscore", cluster.stored("x"), gather=True)
            return normalized, total, summed, added, gathered, grew

    normalized, total, summed, added, gathered, grew = run(main())
    assert np.allclose(normalized, x / np.linalg.norm(x, axis=1, keepdims=True))
    assert total == x.sum()
    assert np.array_equal(summed, x.sum(axis=0))
    assert np.array_equal(added, x + np.array([10.0, 20.0, 30.0]))
    np.testing.assert_allclose(gathered, arrowbridge.call("zscore", x))
    assert grew <= 0, f"{grew} threads appeared for a fan-out"


def test_replicas_stand_in_for_servers_that_are_gone(servers):
    x = np.arange(300.0).reshape(100, 3)
    locations = [s.location for s in servers]

    async def main():
        async with AsyncClusterClient(locations, replication=2) as cluster:
            await cluster.put("x", x)
            servers[0].shutdown()
            got = await cluster.get("x")
            total = await cluster.call("sum", cluster.stored("x"))
            servers[1].shutdown()
            with pytest.raises(arrowbridge.ServerUnavailableError) as err:
                await cluster.call("sum", cluster.stored("x"))
            return got, total, str(err.value)

    got, total, message = run(main())
    assert np.array_equal(got, x) and total == x.sum()
    assert "shard 0 of 'x' (rows [0, 33))" in message
    assert locations[0] in message and locations[1] in message


def test_a_put_that_fails_on_one_server_leaves_the_previous_version(tmp_path):
    v1, v2 = np.full((1000, 8), 1.0), np.full((64_000, 8), 2.0)
    with arrowbridge.serve() as a, cli_server(tmp_path, file_limit=1 << 20) as b:

        async def main():
            async with AsyncClusterClient([a.location, b]) as cluster:
                await cluster.put("x", v1)
                # v2's shard on b is 2 MiB: b's disk refuses it, a stores its shard.
                with pytest.raises(arrowbridge.RemoteStorageError, match=r"x\.shard-1-of-2"):
                    await cluster.put("x", v2)
                return await cluster.get("x")

        assert np.array_equal(run(main()), v1)
        for location in (a.location, b):
            # The map and v1's shard: no shard of the failed put is left.
            assert held(location) == (["x"], 2)


def test_puts_of_one_name_racing_on_one_loop_leave_every_server_the_newest(servers):
    locations = [s.location for s in servers]
    rows = 300

    async def writer(client, base):
        for k in range(20):
            await client.put("x", np.full((rows, 2), float(base + k)), shards=3)

    async def main():
        async with (
            AsyncClusterClient(locations) as first,
            AsyncClusterClient(locations) as second,
        ):
            await first.put("x", np.zeros((rows, 2)))
            await asyncio.gather(writer(first, 1000), writer(second, 2000))

    run(main())
    answers = set()
    for location in locations:
        with arrowbridge.connect(location) as plain:
            answers |= set(np.unique(plain.get("x")))
    assert answers in ({1019.0}, {2019.0})
    assert sum(counts(servers)) == 3 + 3, [held(loc) for loc in locations]


def test_a_cancelled_put_stores_nothing_and_deletes_its_shards(servers):
    locations = [s.location for s in servers]
    big = np.ones((3 * 2**20, 8))  # 192 MiB: still being sent when it is cancelled

    async def main():
        async with AsyncClusterClient(locations, replication=2) as cluster:
            await cluster.put("x", np.arange(10))
            stored = sum(counts(servers))
            put = asyncio.create_task(cluster.put("x", big))
            await asyncio.sleep(0.05)
            put.cancel()
            with pytest.raises(asyncio.CancelledError):
                await put
            # A stream cancelled after its first shard was stored (on two servers), while
            # its second is under way: that one is aborted, the first deleted afterwards.
            sent = asyncio.Event()

            async def stalls():
                for i in range(3):
                    yield np.full(100, i)  # 800 bytes: a shard ends after two
                sent.set()
                await asyncio.Event().wait()

            put = asyncio.create_task(cluster.put("x", stalls(), shard_bytes=1600))
            await sent.wait()
            first = sum(counts(servers))
            put.cancel()
            with pytest.raises(asyncio.CancelledError):
                await put
            got = await cluster.get("x")
            # The cleanup runs in a task of its own: give it time to delete the shards.
            for _ in range(100):
                if sum(counts(servers)) == stored:
                    break
                await asyncio.sleep(0.05)
            return got, stored, first, sum(counts(servers))

    got, stored, first, after = run(main())
    assert got.tolist() == list(range(10))
    assert first == stored + 2, "the stream's first shard was stored on both its replicas"
    assert after == stored, "every shard the cancelled puts stored was deleted"


def test_an_async_stream_is_sharded_as_it_comes(servers):
    locations = [s.location for s in servers]

    async def rows():
        for i in range(10):
            await asyncio.sleep(0)
            yield {"i": np.full(100, i), "v": np.full((100, 2), float(i))}

    async def failing():
        for i in range(5):
            yield np.full(100, i)
        raise OSError("the source broke")

    async def main():
        async with AsyncClusterClient(locations, replication=2) as cluster:
            await cluster.put("s", rows(), shard_bytes=10_000)  # 2,400 bytes a batch
            shards = await cluster.shards("s")
            got = await cluster.get("s")
            batches = [b["i"].tolist() async for b in await cluster.stream("s", batch_rows=250)]
            stored = sum(counts(servers))
            with pytest.raises(OSError, match="the source broke"):
                await cluster.put("s", failing(), shard_bytes=1600)
            with pytest.raises(arrowbridge.ShapeError, match="no batches"):
                await cluster.put("t", iter([]))
            with pytest.raises(ValueError, match="shards=2 is for an item in memory"):
                await cluster.put("t", rows(), shards=2)
            return shards, got, batches, stored, sum(counts(servers)), await cluster.get("s")

    shards, got, batches, stored, after, again = run(main())
    assert [s["rows"] for s in shards] == [[0, 500], [500, 1000]]
    assert [s["locations"] for s in shards] == [locations[0:2], locations[1:3]]
    assert got["i"].tolist() == np.repeat(np.arange(10), 100).tolist()
    assert np.array_equal(got["v"][:, 1], got["i"].astype(float))
    assert [len(b) for b in batches] == [250, 250, 250, 250]
    assert after == stored, "a stream that failed part way left nothing"
    assert np.array_equal(again["i"], got["i"])


def test_a_stream_whose_version_is_replaced_before_its_first_batch_starts_again(
    servers, monkeypatch
):
    locations = [s.location for s in servers]
    opened = arrowbridge.aio.AsyncClient.stream

    async def main():
        async with AsyncClusterClient(locations) as writer, AsyncClusterClient(locations) as r:
            await writer.put("x", np.full((40, 2), 1.0), shards=2)

            async def stream_then_put(self, name, **options):
                stream = await opened(self, name, **options)
                monkeypatch.setattr(arrowbridge.aio.AsyncClient, "stream", opened)
                await writer.put("x", np.full((40, 2), 2.0), shards=2)
                return stream

            monkeypatch.setattr(arrowbridge.aio.AsyncClient, "stream", stream_then_put)
            batches = [b async for b in await r.stream("x", batch_rows=10)]
            assert np.array_equal(np.concatenate(batches), np.full((40, 2), 2.0))

    run(main())
    assert sum(counts(servers)) == 3 + 2


def test_delete_and_bad_arguments_say_what_is_wrong(servers):
    locations = [s.location for s in servers]

    async def main():
        async with AsyncClusterClient(locations) as cluster:
            await cluster.put("x", np.arange(30), shards=3)
            await cluster.delete("x")
            with pytest.raises(arrowbridge.RemoteNotFoundError, match="no server holds"):
                await cluster.delete("x")
            with pytest.raises(arrowbridge.InvalidNameError, match="reserved"):
                await cluster.put("x.shard-0-of-2", np.arange(3))
            with pytest.raises(ValueError, match="shards=0"):
                await cluster.put("y", np.arange(3), shards=0)
            return sum(counts(servers))

    assert run(main()) == 0
    with pytest.raises(arrowbridge.InvalidLocationError, match="listed twice"):
        AsyncClusterClient([servers[0].location, servers[0].location])
    with pytest.raises(ValueError, match="replication=4"):
        AsyncClusterClient([s.location for s in servers], replication=4)


def test_a_put_cancelled_as_its_loop_ends_is_cleaned_up_all_the_same(servers):
    # asyncio.run cancels what is left when main ends: the cleanup of a put cancelled right
    # before does not run on that loop, and shards of puts still landing after their
    # cleanup deleted them are refused by their servers.
    locations = [s.location for s in servers]
    big = np.ones((2**20, 8))  # 64 MiB

    async def put_and_give_up(i):
        async with AsyncClusterClient(locations, replication=2) as cluster:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cluster.put(f"y{i}", big), 0.003 * i)

    def orphans():
        """Shard items on the servers that no committed map names."""
        on_servers = {(n, s.location) for s in servers for n in held(s.location)[0]}
        with ClusterClient(locations) as blocking:
            named = {
                (shard["name"], location)
                for item in blocking.list()
                if ".shard-" not in item["name"]  # a map (shards are listed too)
                for shard in blocking.shards(item["name"])
                for location in shard["locations"]
            }
        return {(n, loc) for n, loc in on_servers if ".shard-" in n} - named

    for i in range(16):
        asyncio.run(put_and_give_up(i))
    deadline = time.monotonic() + 15
    while orphans() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not orphans()


def test_a_delete_skips_a_server_that_is_down(servers):
    locations = [s.location for s in servers]

    async def main():
        async with AsyncClusterClient(locations, replication=2) as cluster:
            await cluster.put("x", np.arange(30))
            servers[2].shutdown()
            await cluster.delete("x")
            with pytest.raises(arrowbridge.ShapeError, match="sequence of column names"):
                await cluster.get("x", columns="ab")

    run(main())
    assert counts(servers[:2]) == [0, 0]


def test_a_client_moves_to_another_loop_only_once_the_first_has_no_calls(servers):
    x = np.arange(10)
    client = arrowbridge.aio.connect(servers[0].location)
    first = asyncio.new_event_loop()
    first.run_until_complete(client.put("x", x))
    # Calls under way on a loop that may run again: another loop is refused.
    pending = [first.create_task(client.get("x")) for _ in range(3000)]
    first.run_until_complete(asyncio.sleep(0))
    with pytest.raises(arrowbridge.FlightCallError, match="calls under way"):
        asyncio.run(client.get("x"))
    first.run_until_complete(asyncio.gather(*pending))
    assert all(np.array_equal(t.result(), x) for t in pending)
    # Closed with calls queued and under way: the next loop starts afresh.
    stranded = [first.create_task(client.get("x")) for _ in range(3000)]
    first.run_until_complete(asyncio.sleep(0))
    assert not all(t.done() for t in stranded)
    first.close()
    assert np.array_equal(run(client.get("x")), x)
    # Closed, the client refuses calls (and registers nothing with the loop).
    client.close()

    async def after_close():
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            with pytest.raises(arrowbridge.FlightCallError, match="closed"):
                await client.list()
        return fds, len(os.listdir("/proc/self/fd"))

    before, after = run(after_close())
    # One leaked descriptor per call would be 50 more; others' may close meanwhile.
    assert after <= before
