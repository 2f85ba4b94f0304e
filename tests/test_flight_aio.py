"""The asyncio client against real servers: every call awaited, many at once on one client
with no thread per call, cancellation that resets the RPC, deadlines, streams both ways, and
an aiohttp service (examples/aiohttp_app.py) read by a real HTTP client."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import arrowbridge
from arrowbridge import aio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def server():
    with arrowbridge.serve() as s:
        yield s


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_every_call(server):
    async def main():
        async with aio.connect(server.location) as client:
            await client.put("x", np.arange(6.0).reshape(2, 3))
            await client.put("d", {"id": np.arange(4), "v": np.ones((4, 2), np.float32)})
            x = await client.get("x")
            part = await client.get("d", columns=["id"], rows=(1, 3))
            summed = await client.call("sum", client.stored("x"), axis=1)
            both = await client.call("identity", np.arange(2), np.zeros(1))
            info = await client.info("x")
            names = [i["name"] for i in await client.list()]
            health = await client.health()
            kernels = await client.kernels()
            await client.delete("d")
            after = [i["name"] for i in await client.list()]
            return x, part, summed, both, info, names, health, kernels, after

    x, part, summed, both, info, names, health, kernels, after = asyncio.run(main())
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and x.flags.writeable
    assert part["id"].tolist() == [1, 2] and list(part) == ["id"]
    assert summed.tolist() == [3.0, 12.0]
    assert [a.tolist() for a in both] == [[0, 1], [0.0]]
    assert info["rows"] == 2 and names == ["d", "x"] and after == ["x"]
    assert health == {"status": "ok", "stored": 2}
    assert "sum" in kernels


def test_errors_are_the_blocking_clients(server):
    async def main():
        async with aio.connect(server.location) as client:
            with pytest.raises(arrowbridge.RemoteNotFoundError, match="no array called"):
                await client.get("missing")
            with pytest.raises(arrowbridge.ShapeError, match="no column"):
                await client.put("d", {"a": np.arange(3)})
                await client.get("d", columns=["b"])
            with pytest.raises(arrowbridge.RemoteInvalidError, match='parameter "axis"'):
                await client.call("sum", np.arange(3), axis="x")
            return await client.get("d")  # still usable

    assert asyncio.run(main())["a"].tolist() == [0, 1, 2]


def test_a_thousand_concurrent_calls_share_one_thread(server):
    x = np.arange(1024, dtype=np.float64)  # 8 KiB

    async def main():
        async with aio.connect(server.location) as client:
            await client.health()
            before = threads()
            peak = before

            async def watch():
                nonlocal peak
                while True:
                    peak = max(peak, threads())
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(
                *(client.call("add", x, np.full(1024, float(i))) for i in range(1000))
            )
            watcher.cancel()
            return results, before, peak

    results, before, peak = asyncio.run(main())
    assert all(np.array_equal(r, x + i) for i, r in enumerate(results))
    assert peak <= before + 2, f"{peak - before} threads appeared for 1,000 calls"


def test_the_client_thread_stays_awake_only_a_moment_after_a_lone_call(server):
    # After a lone call the client's thread keeps polling for the next (up to 300 µs), so
    # that a call awaited right after starts without waking it; it must then sleep.
    async def main():
        async with aio.connect(server.location) as client:
            for _ in range(3):
                await client.call("identity", np.ones(1024))
            before = time.process_time()
            await asyncio.sleep(0.5)
            return time.process_time() - before

    busy = asyncio.run(main())
    assert busy < 0.1, f"the process took {busy:.3f} s of CPU in 0.5 s with no call under way"


def test_the_loop_keeps_running_during_a_large_get(server):
    big = np.ones(64 << 20, np.uint8)

    async def main():
        async with aio.connect(server.location) as client:
            await client.put("big", big)
            stalls = []

            async def tick():
                last = time.perf_counter()
                while True:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    stalls.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            got = await client.get("big")
            ticker.cancel()
            return got, stalls

    got, stalls = asyncio.run(main())
    assert got.nbytes == big.nbytes
    assert len(stalls) >= 3, "the loop ran while the get was under way"


def test_cancelling_a_put_resets_it_and_stores_nothing(server):
    async def main():
        async with aio.connect(server.location) as client:
            task = asyncio.create_task(client.put("big", np.zeros(1 << 30, np.uint8)))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.2)
            return [i["name"] for i in await client.list()]

    assert asyncio.run(main()) == []


def test_cancel_and_timeouts_against_a_silent_server(silent_server):
    async def main():
        async with aio.connect(silent_server, timeout=0.2) as client:
            started = time.monotonic()
            with pytest.raises(arrowbridge.FlightTimeoutError, match="deadline"):
                await client.get("x")
            default = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(arrowbridge.FlightTimeoutError):
                await client.info("x", timeout=0.05)
            explicit = time.monotonic() - started
            task = asyncio.create_task(client.call("sum", np.arange(3), timeout=None))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cancelled = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.list(timeout=None), 0.05)
            waited = time.monotonic() - started
            return default, explicit, cancelled, waited

    default, explicit, cancelled, waited = asyncio.run(main())
    assert 0.2 <= default < 0.35 and 0.05 <= explicit < 0.2
    assert cancelled < 0.05 and waited < 0.2


def test_streams_both_ways(server):
    async def rows():
        for i in range(4):
            await asyncio.sleep(0)
            yield {"i": np.full(3, i), "v": np.ones((3, 2))}

    async def main():
        async with aio.connect(server.location) as client:
            await client.put("s", rows())
            await client.put("g", (np.arange(i, i + 2) for i in (0, 2, 4)))
            stream = await client.stream("s", columns=["i"], batch_rows=5)
            batches = [b async for b in stream]
            async with await client.stream("g", rows=(1, 5), batch_rows=3) as g:
                got = [b.tolist() async for b in g]
            return batches, got, stream.rows

    batches, got, rows_total = asyncio.run(main())
    assert [b["i"].tolist() for b in batches] == [[0, 0, 0, 1, 1], [1, 2, 2, 2, 3], [3, 3]]
    assert rows_total == 12
    assert got == [[1, 2, 3], [4]]


def test_kernels_batch_by_batch(server):
    x = np.arange(20.0).reshape(10, 2)

    async def arrays():
        for i in range(3):
            await asyncio.sleep(0)
            yield np.full((2, 2), float(i))

    async def main():
        async with aio.connect(server.location) as client:
            await client.put("cx", x)
            stored = client.stored("cx")
            rows = [b async for b in client.call_stream("normalize", stored, batch_rows=4)]
            total = [t async for t in client.call_stream("sum", stored, batch_rows=3, axis=0)]
            sent = [b async for b in client.call_stream("add", arrays(), np.ones(2))]
            plain = [b async for b in client.call_stream("identity", iter([np.arange(3)]))]
            with pytest.raises(arrowbridge.NotDistributableError):
                await anext(client.call_stream("pad", stored))
            return rows, total, sent, plain

    rows, total, sent, plain = asyncio.run(main())
    assert [len(b) for b in rows] == [4, 4, 2]
    with arrowbridge.connect(server.location) as client:
        assert np.allclose(np.concatenate(rows), client.call("normalize", x))
    assert [t.tolist() for t in total] == [x.sum(axis=0).tolist()]
    assert [b[0, 0] for b in sent] == [1.0, 2.0, 3.0]
    assert [p.tolist() for p in plain] == [[0, 1, 2]]


def test_a_stream_that_raises_stores_nothing(server):
    async def broken():
        yield np.zeros(1000)
        raise RuntimeError("the source failed")

    async def main():
        async with aio.connect(server.location) as client:
            await client.put("a", np.arange(2.0))
            with pytest.raises(RuntimeError, match="the source failed"):
                await client.put("a", broken())
            with pytest.raises(arrowbridge.ShapeError, match="batch 1: its columns"):
                await client.put("a", iter([np.zeros(2), np.zeros(2, np.int32)]))
            await asyncio.sleep(0.1)
            return await client.get("a")

    assert asyncio.run(main()).tolist() == [0.0, 1.0]


def test_a_client_in_a_forked_child_reconnects(server):
    script = (
        "import asyncio, os, sys, numpy as np\n"
        "from arrowbridge import aio\n"
        f"client = aio.connect({server.location!r})\n"
        "asyncio.run(client.put('parent', np.arange(3)))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    got = asyncio.run(client.get('parent'))\n"
        "    os._exit(0 if got.tolist() == [0, 1, 2] else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert done.returncode == 0


def test_the_aiohttp_example_serves_items_to_a_real_http_client(server):
    aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is in requirements-dev.txt")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import aiohttp_app
    finally:
        sys.path.remove(str(EXAMPLES))
    x = np.arange(3 << 20, dtype=np.float64).reshape(-1, 4)  # 24 MiB: three batches
    with arrowbridge.connect(server.location) as c:
        c.put("x", x)

    async def main():
        runner = aiohttp.web.AppRunner(aiohttp_app.make_app(server.location))
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/items/x") as r:
                    assert r.status == 200
                    body = await r.read()
                async with http.get(f"http://127.0.0.1:{port}/items/x/rows?start=5&end=8") as r:
                    rows = np.load(io.BytesIO(await r.read()))
                async with http.get(f"http://127.0.0.1:{port}/items/nope") as r:
                    missing = r.status
        finally:
            await runner.cleanup()
        return body, rows, missing

    body, rows, missing = asyncio.run(main())
    table = pa.ipc.open_stream(body).read_all()
    assert table.num_rows == x.shape[0] and len(table.to_batches()) == 3
    assert np.array_equal(arrowbridge.to_numpy(table.column("data").combine_chunks()), x)
    assert np.array_equal(rows, x[5:8]) and missing == 404


def test_cancelling_a_wait_for_a_batch_skips_no_rows(server):
    async def main():
        async with aio.connect(server.location) as client:
            await client.put("x", np.arange(200_000))
            stream = await client.stream("x", batch_rows=5_000)
            got, cancelled = [], 0
            while True:
                try:
                    got.append(await asyncio.wait_for(anext(stream), 0.0005))
                except TimeoutError:
                    cancelled += 1
                except StopAsyncIteration:
                    break
            return np.concatenate(got), cancelled

    rows, cancelled = asyncio.run(main())
    assert cancelled > 0
    assert np.array_equal(rows, np.arange(200_000))


def test_closing_the_client_ends_the_calls_it_had_under_way(server):
    async def main():
        client = aio.connect(server.location)
        await client.put("x", np.arange(10_000_000))
        task = asyncio.create_task(client.get("x"))
        await asyncio.sleep(0)
        client.close()
        done, _ = await asyncio.wait([task], timeout=5)
        return done, task

    done, task = asyncio.run(main())
    assert done, "the call ended with the client"
    assert isinstance(task.exception(), arrowbridge.FlightCallError)


def test_calls_queued_for_a_later_turn_fail_and_cancel_one_by_one(server):
    # A gather of many calls starts them over several turns of the loop: a queued call's
    # bad argument fails that call only, a queued call cancelled before its turn never
    # starts, and closing the client ends the ones still waiting.
    x = np.arange(1024, dtype=np.float64)
    bad = np.array(["not", "numbers"], dtype=object)

    async def main():
        async with aio.connect(server.location) as client:
            await client.health()
            args = [bad if i % 50 == 49 else x for i in range(300)]
            mixed = await asyncio.gather(
                *(client.call("identity", a) for a in args), return_exceptions=True
            )
            tasks = [asyncio.create_task(client.call("identity", x)) for _ in range(300)]
            await asyncio.sleep(0)  # the first turn starts some; the rest wait
            for task in tasks[150:]:
                task.cancel()
            ended = await asyncio.gather(*tasks, return_exceptions=True)
            after = await client.call("identity", x)
            queued = [asyncio.create_task(client.call("identity", x)) for _ in range(300)]
            await asyncio.sleep(0)
        closed = await asyncio.gather(*queued, return_exceptions=True)
        return mixed, ended, after, closed

    mixed, ended, after, closed = asyncio.run(asyncio.wait_for(main(), 60))
    for i, r in enumerate(mixed):
        if i % 50 == 49:
            assert isinstance(r, arrowbridge.UnsupportedTypeError), (i, r)
            assert "object" in str(r)
        else:
            assert np.array_equal(r, x), (i, r)
    assert all(np.array_equal(r, x) for r in ended[:150])
    assert all(isinstance(r, asyncio.CancelledError) for r in ended[150:])
    assert np.array_equal(after, x)
    errors = [r for r in closed if isinstance(r, arrowbridge.FlightCallError)]
    assert errors, "calls still queued when the client closed end with an error"
    assert any("before the call began" in str(e) for e in errors)
    assert all(isinstance(r, (np.ndarray, arrowbridge.FlightCallError)) for r in closed)


def test_a_stream_batch_that_times_out_names_the_stream_and_the_server():
    async def main() -> set[str]:
        with arrowbridge.serve() as server:
            async with aio.connect(server.location) as client:
                await client.put("x", np.zeros((1 << 20, 8)))  # 64 MiB, 16 MiB batches
                while True:  # opening the stream is bounded by the timeout too
                    try:
                        stream = await client.stream("x", batch_rows=1 << 18, timeout=0.0005)
                        break
                    except arrowbridge.FlightTimeoutError:
                        pass
                said = set()
                async for _ in _until_a_timeout(stream, said):
                    pass
                stream.close()
                return {m.replace(server.location, "SERVER") for m in said}

    said = asyncio.run(main())
    assert said, "a batch's wait ran out of time"
    assert all(
        m.startswith('stream "x"\'s next batch at SERVER did not finish within') for m in said
    ), said


async def _until_a_timeout(stream, said: set[str]):
    while True:
        try:
            yield await stream.__anext__()
        except arrowbridge.FlightTimeoutError as e:
            said.add(str(e))
            return
        except StopAsyncIteration:
            return
