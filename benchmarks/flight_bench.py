"""Flight benchmarks: servers in processes of their own, clients in this one, one run.

Compared in the same run: the arrowbridge client and server over TCP and a Unix socket, the
pyarrow.flight C++ client against the arrowbridge server and against a pyarrow.flight Python
server, iperf3's single-stream loopback throughput (the wire's ceiling), small calls against
pyarrow.flight's do_exchange echo, many concurrent clients, and the server's memory after
large puts.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

import arrowbridge

MIB = 1 << 20

ECHO_SERVER = textwrap.dedent(
    """
    import sys
    import pyarrow.flight as fl

    class Echo(fl.FlightServerBase):
        def __init__(self, loc):
            super().__init__(loc)
            self.tables = {}

        def do_put(self, context, descriptor, reader, writer):
            self.tables[descriptor.path[0].decode()] = reader.read_all()

        def do_get(self, context, ticket):
            return fl.RecordBatchStream(self.tables[ticket.ticket.decode()])

        def do_exchange(self, context, descriptor, reader, writer):
            table = reader.read_all()
            writer.begin(table.schema)
            writer.write_table(table)

    server = Echo("grpc://127.0.0.1:0")
    print(f"grpc://127.0.0.1:{server.port}", flush=True)
    server.wait()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process(command: list[str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """A server process; yields it and the first line it prints (its location)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        yield proc, line
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "arrowbridge", "serve", *args]


def location_of(line: str) -> str:
    return next(w for w in line.split() if w.startswith("grpc"))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: connections, first-touch pages
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def medians_interleaved(
    fns: dict[str, object], repeats: int, before=None, warmups: int = 1
) -> dict[str, float]:
    """The median of `repeats` timings of each of `fns` after `warmups` calls each, in
    seconds, the calls taking turns: what slows the machine for a while slows each alike.
    `before(name)`, if given, runs untimed before each call."""
    for fn in fns.values():
        for _ in range(warmups):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def shmem_huge_pages() -> str:
    """The kernel's huge-page mode for shared memory (memfds), which sets the cost of a
    shared-memory put: `never` gives 4 KiB pages, `advise` huge pages to mappings that ask."""
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read_text()
    except OSError:
        return "unknown"
    return next((w[1:-1] for w in setting.split() if w.startswith("[")), "unknown")


def iperf3() -> float | None:
    """iperf3's single-stream loopback throughput in bytes/s, or None without iperf3."""
    if shutil.which("iperf3") is None:
        return None
    port = free_port()
    server = subprocess.Popen(
        ["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)  # a probe connection would count as the test's client
        out = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "3", "-J"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        server.terminate()
        server.wait(timeout=10)


def pyarrow_put_get(location: str, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """pyarrow.flight's C++ client: put a tensor table in 8 MiB chunks, get it back."""
    client = fl.FlightClient(location)
    table = pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})
    chunk = max(1, (8 * MIB) // (x.itemsize * int(np.prod(x.shape[1:]))))

    def put():
        w, _ = client.do_put(fl.FlightDescriptor.for_path("bench"), table.schema)
        w.write_table(table, max_chunksize=chunk)
        w.close()

    def get():
        return client.do_get(fl.Ticket(b"bench")).read_all()

    put_t = median_time(put, repeats)
    get_t = median_time(get, repeats)
    client.close()
    return put_t, get_t


def ours_put_get(
    location: str, x: np.ndarray, repeats: int, shm: bool = False
) -> tuple[float, float]:
    with arrowbridge.connect(location, shm=shm) as client:
        put_t = median_time(lambda: client.put("bench", x), repeats)
        get_t = median_time(lambda: client.get("bench"), repeats)
    return put_t, get_t


def ours_whole_and_streamed(
    location: str, x: np.ndarray, repeats: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Put and get of `x` whole, and put from a generator of 8 MiB slices and get as a stream
    of batches (of about 8 MiB, the default), each batch touched as it arrives: (put, get)
    times of each. The two kinds take turns, so that a slow spell of the machine slows both."""
    rows = max(1, (8 * MIB) // (x.itemsize * int(np.prod(x.shape[1:]))))

    def streamed_get():
        n = 0
        for batch in client.stream("bench"):
            n += len(batch)
        assert n == len(x)

    with arrowbridge.connect(location, shm=False) as client:
        puts = medians_interleaved(
            {
                "whole": lambda: client.put("bench", x),
                "streamed": lambda: client.put(
                    "bench", (x[i : i + rows] for i in range(0, len(x), rows))
                ),
            },
            repeats,
            warmups=2,  # as in ours_tcp_and_unix: the third put of a size lands warm
        )
        gets = medians_interleaved(
            {"whole": lambda: client.get("bench"), "streamed": streamed_get}, repeats
        )
    return (puts["whole"], gets["whole"]), (puts["streamed"], gets["streamed"])


def ours_tcp_and_unix(
    tcp: str, unix: str, x: np.ndarray, repeats: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Put and get of `x` over TCP and over a Unix socket (two servers), in turns: (put, get)
    times of each. Two kinds only, so that each server's next put comes within the second
    its freed landing stays warm (`Recycling`), as in the other rows; two puts of each
    before the timed ones, since a server's second put still lands in fresh pages (the
    first put's version is stored until the second replaces it), and a put into fresh pages
    can take long enough that the block the other server freed expires before that
    server's next put, which then lands in fresh pages too."""
    with (
        arrowbridge.connect(tcp, shm=False) as over_tcp,
        arrowbridge.connect(unix, shm=False) as over_unix,
    ):
        puts = medians_interleaved(
            {"tcp": lambda: over_tcp.put("bench", x), "unix": lambda: over_unix.put("bench", x)},
            repeats,
            warmups=2,
        )
        gets = medians_interleaved(
            {"tcp": lambda: over_tcp.get("bench"), "unix": lambda: over_unix.get("bench")},
            repeats,
        )
    return (puts["tcp"], gets["tcp"]), (puts["unix"], gets["unix"])


def asyncio_calls(location: str, calls: int, threads: int, lone: int, rounds: int = 5) -> dict:
    """8 KiB identity calls: `calls` at once from one event loop on one AsyncClient (with a
    ticker task measuring the loop's longest stall), against `threads` threads sharing one
    blocking client and `threads` threads of pyarrow.flight clients (DoExchange to the same
    server and kernel), the three taking turns for `rounds` rounds (medians); and lone
    calls: awaited one after another (as an async handler making several calls does), in
    blocks of 20 taking turns with 20 blocking calls, and one by one, each async call right
    after a blocking one."""
    import asyncio
    import json

    from arrowbridge import aio

    small = np.ones(1024)
    expected = small.copy()
    per = calls // threads
    command = fl.FlightDescriptor.for_command(json.dumps({"kernel": "identity"}).encode())
    table = pa.table({"x": small})

    async def with_ticker(calls) -> tuple[float, float, list]:
        """Wall time, the loop's longest stall (a ticker task's late ticks) and the results
        of `asyncio.gather` of the coroutines `calls()` makes."""
        stalls: list[float] = []

        async def tick() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                stalls.append(now - last - 0.001)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        results = await asyncio.gather(*calls())
        wall = time.perf_counter() - t0
        ticker.cancel()
        return wall, max(stalls), results

    async def many(client: aio.AsyncClient) -> tuple[float, float, float]:
        # What asyncio itself holds the loop up for: the same gather of coroutines that
        # each only wait (creating a thousand tasks and starting them takes whole turns).
        _, floor, _ = await with_ticker(lambda: (asyncio.sleep(0.002) for _ in range(calls)))
        wall, stall, results = await with_ticker(
            lambda: (client.call("identity", small) for _ in range(calls))
        )
        assert all(np.array_equal(r, expected) for r in results)
        return wall, stall, floor

    def blocking_threads(shared: arrowbridge.Client) -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(
                pool.map(
                    lambda _: [shared.call("identity", small) for _ in range(per)], range(threads)
                )
            )
        return time.perf_counter() - t0

    def pyarrow_worker(_: int) -> None:
        client = fl.FlightClient(location)
        for _ in range(per):
            writer, reader = client.do_exchange(command)
            writer.begin(table.schema)
            writer.write_table(table)
            writer.done_writing()
            reader.read_all()
            writer.close()
        client.close()

    def pyarrow_threads() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(pyarrow_worker, range(threads)))
        return time.perf_counter() - t0

    loop = asyncio.new_event_loop()
    walls: dict[str, list[float]] = {"async": [], "sync": [], "pyarrow": []}
    stalls, floors = [], []
    async_lone, sync_lone, async_after_sync = [], [], []
    client = aio.connect(location)
    try:
        with arrowbridge.connect(location) as shared:
            loop.run_until_complete(client.call("identity", small))
            shared.call("identity", small)
            pyarrow_worker(0)
            for _ in range(rounds):
                wall, stall, floor = loop.run_until_complete(many(client))
                walls["async"].append(wall)
                stalls.append(stall)
                floors.append(floor)
                walls["sync"].append(blocking_threads(shared))
                walls["pyarrow"].append(pyarrow_threads())

            async def lone_async(n: int) -> list[float]:
                out = []
                for _ in range(n):
                    t1 = time.perf_counter()
                    await client.call("identity", small)
                    out.append(time.perf_counter() - t1)
                return out

            block = 20
            for _ in range(max(1, lone // block)):
                async_lone += loop.run_until_complete(lone_async(block))
                for _ in range(block):
                    t1 = time.perf_counter()
                    shared.call("identity", small)
                    sync_lone.append(time.perf_counter() - t1)
            for _ in range(lone // 2):
                async_after_sync += loop.run_until_complete(lone_async(1))
                shared.call("identity", small)
    finally:
        client.close()
        loop.close()
    wall = {kind: statistics.median(w) for kind, w in walls.items()}
    return {
        "calls": calls,
        "threads": threads,
        "rounds": rounds,
        "async_per_s": calls / wall["async"],
        "sync_per_s": per * threads / wall["sync"],
        "pyarrow_per_s": per * threads / wall["pyarrow"],
        "stall": statistics.median(stalls),
        "stall_max": max(stalls),
        "stall_floor": statistics.median(floors),
        "async_lone_p50": percentile(async_lone, 50),
        "sync_lone_p50": percentile(sync_lone, 50),
        "async_after_sync_p50": percentile(async_after_sync, 50),
    }


def small_calls(location: str, n: int) -> list[float]:
    small = np.ones(1024)  # 8 KiB
    out = []
    with arrowbridge.connect(location) as client:
        client.call("identity", small)
        for _ in range(n):
            t0 = time.perf_counter()
            client.call("identity", small)
            out.append(time.perf_counter() - t0)
    return out


def small_puts_gets(location: str, n: int) -> dict[str, list[float]]:
    """Puts and gets of one 8 KiB item, in turns, as a client with default options makes
    them (on this host too, both by gRPC at this size: a get in one round trip)."""
    small = np.ones(1024)  # 8 KiB
    out: dict[str, list[float]] = {"put": [], "get": []}
    with arrowbridge.connect(location) as client:
        client.put("small", small)
        client.get("small")
        for _ in range(n):
            for kind, call in (
                ("put", lambda: client.put("small", small)),
                ("get", lambda: client.get("small")),
            ):
                t0 = time.perf_counter()
                call()
                out[kind].append(time.perf_counter() - t0)
        client.delete("small")
    return out


SOCKET_ECHO_SERVER = textwrap.dedent(
    """
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(1 << 20):
        conn.sendall(data)
    """
)


def socket_round_trips(n: int) -> list[float]:
    """Round trips of 8 KiB between two processes over a plain TCP socket on loopback: the
    floor under any RPC's latency on this machine."""
    out = []
    with process([sys.executable, "-c", SOCKET_ECHO_SERVER]) as (_, port):
        with socket.create_connection(("127.0.0.1", int(port))) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = bytes(8192)
            buffer = bytearray(8192)
            for i in range(n + 1):
                t0 = time.perf_counter()
                conn.sendall(message)
                got = 0
                while got < len(message):
                    got += conn.recv_into(memoryview(buffer)[got:])
                if i:  # the first one is warm-up
                    out.append(time.perf_counter() - t0)
    return out


def echo_calls(location: str, n: int) -> list[float]:
    client = fl.FlightClient(location)
    table = pa.table({"x": np.ones(1024)})

    def call():
        w, r = client.do_exchange(fl.FlightDescriptor.for_command(b"echo"))
        w.begin(table.schema)
        w.write_table(table)
        w.done_writing()
        r.read_all()
        w.close()

    call()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def concurrent_calls(location: str, clients: int, calls: int) -> dict:
    small = np.ones(1024)
    errors: list[str] = []

    def worker(_: int) -> list[float]:
        out = []
        with arrowbridge.connect(location) as c:
            for _ in range(calls):
                t0 = time.perf_counter()
                try:
                    c.call("identity", small)
                except Exception as e:  # counted, reported
                    errors.append(repr(e))
                out.append(time.perf_counter() - t0)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [v for chunk in pool.map(worker, range(clients)) for v in chunk]
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "calls": clients * calls,
        "errors": len(errors),
        "calls_per_s": clients * calls / wall,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
    }


def rss(pid: int, kind: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) * 1024
    return 0


BOUNDED_CLIENT = textwrap.dedent(
    """
    import resource, sys, time
    limit = int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np, arrowbridge
    location, in_memory, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    block = np.ones((1 << 17, 8))  # 8 MiB

    def blocks():
        return (block for _ in range(total // block.nbytes))

    def kernel(c):
        t = time.perf_counter()
        rows = sum(len(r) for r in c.call_stream("normalize", c.stored("huge")))
        assert rows * 64 == total, rows
        return time.perf_counter() - t

    with arrowbridge.connect(location, shm=False) as c:
        c.health()
        print("idle", flush=True)
        sys.stdin.readline()
        t = time.perf_counter()
        c.put("huge", blocks())
        put = time.perf_counter() - t
        t = time.perf_counter()
        rows = sum(len(batch) for batch in c.stream("huge"))
        get = time.perf_counter() - t
        assert rows * 64 == total, rows
        on_disk = kernel(c)
    # The same kernel over the same item held in memory by a server without a data_dir.
    with arrowbridge.connect(in_memory, shm=False) as m:
        m.put("huge", blocks())
        in_ram = kernel(m)
    print(put, get, on_disk, in_ram, flush=True)
    """
)


def bounded_memory(total: int, limit: int) -> dict:
    """A `total`-byte item put from a generator of 8 MiB blocks to a data_dir server and read
    back as a stream, by a client whose address space is limited to `limit` bytes: the most
    anonymous memory (RssAnon, sampled every 50 ms) each side held above its idle figure
    (the data_dir server's, not the in-memory one's). Then a row-wise kernel (`normalize`)
    streamed over the stored item (`call_stream`), against the same over the item held in
    memory by a server without a data_dir."""
    data = Path(tempfile.mkdtemp(prefix="arrowbridge-bench-data-", dir="/var/tmp"))
    try:
        with (
            process(ours("--port", str(free_port()), "--data-dir", str(data))) as (server, line),
            process(ours("--port", str(free_port()))) as (_, memory_line),
        ):
            args = [location_of(line), location_of(memory_line), str(total), str(limit)]
            client = subprocess.Popen(
                [sys.executable, "-c", BOUNDED_CLIENT, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdout.readline().strip() == "idle"
            idle = {"client": rss(client.pid, "RssAnon"), "server": rss(server.pid, "RssAnon")}
            grown = dict.fromkeys(idle, 0)
            client.stdin.write("\n")
            client.stdin.flush()
            while client.poll() is None:
                for side, pid in (("client", client.pid), ("server", server.pid)):
                    grown[side] = max(grown[side], rss(pid, "RssAnon") - idle[side])
                time.sleep(0.05)
            out, _ = client.communicate()
            if client.returncode != 0:
                raise RuntimeError(f"the bounded-memory client failed: {out!r}")
            put, get, kernel, kernel_in_memory = map(float, out.split())
            return {
                "total": total,
                "limit": limit,
                "put": put,
                "get": get,
                "kernel": kernel,
                "kernel_in_memory": kernel_in_memory,
                **grown,
            }
    finally:
        shutil.rmtree(data, ignore_errors=True)


PUT_AND_EXIT = (
    "import sys, numpy as np, arrowbridge; "
    "arrowbridge.connect(sys.argv[1], shm=False)"
    ".put(sys.argv[2], np.ones((int(sys.argv[3]), 1024)))"
)


def server_memory(each: int) -> tuple[int, int]:
    """Server RSS above idle after four puts of `each` bytes, the second and fourth by client
    processes that exit right after the acknowledgement; and the bytes put."""
    rows = each // (1024 * 8)
    with process(ours("--port", str(free_port()))) as (proc, line):
        location = location_of(line)
        with arrowbridge.connect(location, shm=False) as c:
            c.health()
            idle = rss(proc.pid)
            for i in range(4):
                if i % 2:
                    subprocess.run(
                        [sys.executable, "-c", PUT_AND_EXIT, location, f"m{i}", str(rows)],
                        check=True,
                    )
                else:
                    c.put(f"m{i}", np.ones((rows, 1024)))
                c.info(f"m{i}")
            time.sleep(0.5)
            return rss(proc.pid) - idle, 4 * rows * 1024 * 8


def interrupts(nbytes: int, tries: int) -> dict:
    """How late a blocking call gives up once its deadline has passed or Ctrl+C (SIGINT to
    this process, from a timer thread) has arrived: `tries` times each against a server that
    accepts connections and never answers (get, info and put in turn), and in the middle of
    a get or put of `nbytes` over TCP to a real server (in turn). Lateness in seconds, by
    case; a try whose call ended before its interrupt fired is not counted."""
    # Ctrl+C at a terminal raises KeyboardInterrupt. A run started in the background of a
    # non-interactive shell (as CI jobs often are) inherits SIGINT ignored, and Python then
    # installs no handler: the terminal's is put back while this measures.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _interrupts(nbytes, tries)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupts(nbytes: int, tries: int) -> dict:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    held: list[socket.socket] = []  # accepted and never answered

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    silent = arrowbridge.connect(f"grpc://127.0.0.1:{listener.getsockname()[1]}")
    x = np.ones((nbytes // (8 * 1024), 1024))
    lateness: dict[str, list[float]] = {}
    # Calls that neither ended nor gave up by their bound: a client that stopped answering
    # after an interrupted call. Counted, and the client replaced, so the run goes on.
    stuck: dict[str, int] = {}
    with process(ours("--port", str(free_port()))) as (_, line):
        location = location_of(line)
        conn = {"real": arrowbridge.connect(location, shm=False)}
        conn["real"].put("whole", x)
        whole = median_time(lambda: conn["real"].get("whole"), 3)
        # Well inside a transfer: a third of a whole get's time.
        mid = whole / 3
        bound = 5 + 20 * whole
        calls = {
            "silent server": [
                lambda **kw: silent.get("x", **kw),
                lambda **kw: silent.info("x", **kw),
                lambda **kw: silent.put("x", np.arange(3), **kw),
            ],
            f"mid-transfer of {nbytes >> 20} MiB": [
                lambda **kw: conn["real"].get("whole", **kw),
                lambda **kw: conn["real"].put("other", x, **kw),
            ],
        }
        for where, fns in calls.items():
            wait = 0.05 if where == "silent server" else mid
            deadline, ctrl_c = [], []
            for i in range(tries):
                fn = fns[i % len(fns)]
                start = time.perf_counter()
                try:
                    fn(timeout=wait)
                except arrowbridge.FlightTimeoutError:
                    deadline.append(time.perf_counter() - start - wait)
                fired: list[float] = []

                def interrupt(fired: list[float] = fired) -> None:
                    fired.append(time.perf_counter())
                    signal.raise_signal(signal.SIGINT)

                timer = threading.Timer(wait, interrupt)
                timer.start()
                try:
                    try:
                        fn(timeout=bound)
                    except arrowbridge.FlightTimeoutError:
                        stuck[where] = stuck.get(where, 0) + 1
                        conn["real"].close()
                        conn["real"] = arrowbridge.connect(location, shm=False)
                    timer.join()  # ended first: its KeyboardInterrupt is still to come
                    time.sleep(1)
                except KeyboardInterrupt:
                    if fired:
                        ctrl_c.append(time.perf_counter() - fired[0])
            lateness[f"deadline, {where}"] = deadline
            lateness[f"Ctrl+C, {where}"] = ctrl_c
        conn["real"].close()
    silent.close()
    listener.close()
    for s in held:
        s.close()
    return {"tries": tries, "lateness": lateness, "stuck": stuck}


def run(
    sizes: list[int],
    repeats: int,
    concurrency: tuple[int, int],
    small_n: int,
    bounded: tuple[int, int],
    interrupted: tuple[int, int],
) -> dict:
    """Every Flight figure, at every size in `sizes` (bytes of a float64 (n, 1024) tensor)."""
    results: dict = {"sizes": {}, "iperf3": {}, "shmem_huge_pages": shmem_huge_pages()}
    tmp = Path(tempfile.mkdtemp(prefix="arrowbridge-bench-"))
    try:
        with (
            process(ours("--port", str(free_port()))) as (_, tcp_line),
            process(ours("--unix", str(tmp / "ab.sock"))) as (_, unix_line),
            process([sys.executable, "-c", ECHO_SERVER]) as (_, echo_line),
            process(ours("--port", str(free_port()), "--data-dir", str(tmp / "data"))) as (
                _,
                data_line,
            ),
        ):
            tcp, unix, echo = location_of(tcp_line), location_of(unix_line), echo_line
            data_dir = location_of(data_line)
            for nbytes in sizes:
                x = np.random.default_rng(0).standard_normal((nbytes // (8 * 1024), 1024))
                # The wire's ceiling right before and after this size's transfers: the
                # better of the two, so that a slow spell of the machine lowers our figures,
                # never the ceiling they are compared with.
                wire = [iperf3()]
                row = {}
                row["ours tcp"], streamed = ours_whole_and_streamed(tcp, x, repeats)
                # Compared with TCP in turns of their own (the ratio in the headline).
                tcp_again, row["ours unix"] = ours_tcp_and_unix(tcp, unix, x, repeats)
                results.setdefault("tcp beside unix", {})[x.nbytes] = tcp_again
                row["ours shared memory"] = ours_put_get(tcp, x, repeats, shm=True)
                row["ours tcp, streamed"] = streamed
                # Written to its file as it arrives, served from the page cache (warm after
                # the first get, which median_time discards).
                row["ours tcp, data_dir"] = ours_put_get(data_dir, x, repeats)
                row["np.copy (reference for a put)"] = (
                    median_time(lambda x=x: np.copy(x), repeats),
                    float("nan"),
                )
                row["pyarrow client, ours"] = pyarrow_put_get(tcp, x, repeats)
                row["pyarrow client, pyarrow server"] = pyarrow_put_get(echo, x, repeats)
                results["sizes"][x.nbytes] = row
                wire.append(iperf3())
                results["iperf3"][x.nbytes] = None if None in wire else max(wire)
                with arrowbridge.connect(tcp, shm=False) as c:
                    c.delete("bench")
                for location in (unix, data_dir):
                    with arrowbridge.connect(location, shm=False) as c:
                        c.delete("bench")
                print(f"  flight: measured {x.nbytes >> 20} MiB", file=sys.stderr)
            results["ours call"] = small_calls(tcp, small_n)  # calls always go by gRPC
            results["small items"] = small_puts_gets(tcp, small_n)
            results["echo call"] = echo_calls(echo, small_n)
            results["socket round trip"] = socket_round_trips(small_n)
            results["concurrent"] = concurrent_calls(tcp, *concurrency)
            results["asyncio"] = asyncio_calls(tcp, 1000, 32, small_n)
        results["memory"] = server_memory(sizes[0])
        results["bounded"] = bounded_memory(*bounded)
        results["interrupts"] = interrupts(*interrupted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def report(r: dict, fmt_time: Callable[[float], str]) -> tuple[list[str], list[str]]:
    """(headline lines, section lines) of the Markdown report."""
    lines = [
        "| size | path | put GB/s | get GB/s | put / iperf3 | get / iperf3 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    headline = []
    for nbytes, row in r["sizes"].items():
        wire = r["iperf3"][nbytes]
        for path, (put_t, get_t) in row.items():
            if path.startswith("np.copy"):
                lines.append(f"| {nbytes >> 20} MiB | {path} | {nbytes / put_t / 1e9:.2f} | | | |")
                continue
            put, get = nbytes / put_t, nbytes / get_t
            rel = (
                f"{put / wire:.2f}× | {get / wire:.2f}×"
                if wire
                else "iperf3 missing | iperf3 missing"
            )
            lines.append(
                f"| {nbytes >> 20} MiB | {path} | {put / 1e9:.2f} | {get / 1e9:.2f} | {rel} |"
            )
        ours_put, ours_get = (nbytes / t for t in row["ours tcp"])
        pa_put, pa_get = (nbytes / t for t in row["pyarrow client, pyarrow server"])
        unix_put, unix_get = (nbytes / t for t in row["ours unix"])
        beside_put, beside_get = (nbytes / t for t in r["tcp beside unix"][nbytes])
        vs_wire = (
            f"{ours_put / wire:.2f}× / {ours_get / wire:.2f}× iperf3's {wire / 1e9:.2f} GB/s, "
            if wire
            else ""
        )
        streamed_put, streamed_get = (nbytes / t for t in row["ours tcp, streamed"])
        headline.append(
            f"- Flight {nbytes >> 20} MiB streamed (put from a generator of 8 MiB slices, get "
            f"as a stream of batches): {streamed_put / ours_put:.2f}× / "
            f"{streamed_get / ours_get:.2f}× the whole-item put / get of the same run."
        )
        file_put, file_get = (nbytes / t for t in row["ours tcp, data_dir"])
        headline.append(
            f"- Flight {nbytes >> 20} MiB with a `data_dir` (put written to its file as it "
            f"arrives, get from the warm page cache): {file_put / ours_put:.2f}× / "
            f"{file_get / ours_get:.2f}× the in-memory server's put / get of the same run."
        )
        shm_put, shm_get = row["ours shared memory"]
        copy = row["np.copy (reference for a put)"][0]
        headline.append(
            f"- Shared memory, {nbytes >> 20} MiB: get {fmt_time(shm_get)}, put "
            f"{fmt_time(shm_put)} ({shm_put / copy:.2f}× np.copy's {fmt_time(copy)}; the "
            f"kernel's shmem huge pages: {r['shmem_huge_pages']})."
        )
        headline.append(
            f"- Flight {nbytes >> 20} MiB over TCP: put {ours_put / 1e9:.2f} GB/s, get "
            f"{ours_get / 1e9:.2f} GB/s ({vs_wire}{ours_put / pa_put:.2f}× / "
            f"{ours_get / pa_get:.2f}× pyarrow.flight client ⇄ server); Unix socket "
            f"{unix_put / beside_put:.2f}× / {unix_get / beside_get:.2f}× TCP (in turns with "
            f"it; target ≥ 1.2×)."
        )
    p50, echo50 = percentile(r["ours call"], 50), percentile(r["echo call"], 50)
    wire50 = percentile(r["socket round trip"], 50)
    c = r["concurrent"]
    a = r["asyncio"]
    grown, put = r["memory"]
    headline += [
        f"- Small call (8 KiB identity, DoExchange): p50 {fmt_time(p50)} vs pyarrow.flight's "
        f"echo {fmt_time(echo50)} ({p50 / echo50:.2f}×), a plain TCP socket's 8 KiB round trip "
        f"{fmt_time(wire50)} ({p50 / wire50:.2f}×); {c['clients']} clients × "
        f"{c['calls'] // c['clients']} calls: {c['calls_per_s']:.0f} calls/s, p99 "
        f"{fmt_time(c['p99'])}, {c['errors']} errors.",
        f"- Small items (8 KiB, default options, on this host): put p50 "
        f"{fmt_time(percentile(r['small items']['put'], 50))}, get p50 "
        f"{fmt_time(percentile(r['small items']['get'], 50))} (both by gRPC, the get in one "
        f"round trip): "
        f"{percentile(r['small items']['put'], 50) / p50:.2f}× / "
        f"{percentile(r['small items']['get'], 50) / p50:.2f}× a small call.",
        f"- asyncio: {a['calls']} concurrent 8 KiB calls from one event loop on one "
        f"AsyncClient {a['async_per_s']:.0f} calls/s, {a['async_per_s'] / a['sync_per_s']:.2f}× "
        f"{a['threads']} threads on one blocking client ({a['sync_per_s']:.0f}/s) and "
        f"{a['async_per_s'] / a['pyarrow_per_s']:.2f}× {a['threads']} threads of pyarrow.flight "
        f"clients ({a['pyarrow_per_s']:.0f}/s) (medians of {a['rounds']} rounds in turns); the "
        f"loop's longest stall {fmt_time(a['stall'])} (median of the rounds; at most "
        f"{fmt_time(a['stall_max'])}), asyncio's own for a gather of {a['calls']} coroutines "
        f"that only sleep {fmt_time(a['stall_floor'])}; "
        f"a lone async call p50 {fmt_time(a['async_lone_p50'])}, "
        f"{a['async_lone_p50'] / a['sync_lone_p50']:.2f}× a blocking one's (calls awaited one "
        f"after another; {a['async_after_sync_p50'] / a['sync_lone_p50']:.2f}× for an async "
        "call right after a blocking one).",
        f"- Server memory after four puts of {put >> 22} MiB (two by clients that exit right "
        f"after the acknowledgement): {grown / MIB:.0f} MiB above idle for {put >> 20} MiB "
        f"({grown / put:.2f}×).",
    ]
    b = r["bounded"]
    headline.append(
        f"- Beyond memory: a {b['total'] >> 20} MiB item put from a generator of 8 MiB blocks "
        f"to a `data_dir` server and streamed back, by a client limited to "
        f"{b['limit'] >> 20} MiB of address space (`RLIMIT_AS`): anonymous memory above idle "
        f"at most {b['client'] >> 20} MiB in the client and {b['server'] >> 20} MiB in the "
        f"server (RssAnon every 50 ms); put {b['total'] / b['put'] / 1e9:.2f} GB/s (written "
        f"to fresh page cache), streamed get {b['total'] / b['get'] / 1e9:.2f} GB/s; a "
        f"row-wise kernel (`normalize`) streamed over it with `call_stream` "
        f"{b['total'] / b['kernel'] / 1e9:.2f} GB/s, {b['kernel_in_memory'] / b['kernel']:.2f}× "
        f"the throughput of the same over the item held in memory (target ≥ 0.8×)."
    )
    late = r["interrupts"]["lateness"]

    def p99(case: str) -> str:
        values = late[case]
        return f"{fmt_time(percentile(values, 99))} ({len(values)})" if values else "none"

    headline.append(
        "- Deadlines and Ctrl+C, how late a call gives up, p99 over "
        f"{r['interrupts']['tries']} tries (tries counted): "
        + "; ".join(f"{case} {p99(case)}" for case in late)
        + " (target ≤ 100 ms)"
        + "".join(
            f"; {n} call(s) {where} neither ended nor gave up (a client stuck after an "
            "interrupted call)"
            for where, n in r["interrupts"]["stuck"].items()
        )
        + "."
    )
    wires = [
        f"{w / 1e9:.2f} GB/s around the {n >> 20} MiB transfers"
        for n, w in r["iperf3"].items()
        if w
    ]
    lines += [
        "",
        "iperf3 single stream on loopback (the better of a run right before and one right "
        "after each size's transfers): "
        + ("; ".join(wires) + "." if wires else "not installed (`apt-get install iperf3`)."),
        "",
        f"Small calls: p50 {fmt_time(p50)}, p99 {fmt_time(percentile(r['ours call'], 99))}; "
        f"pyarrow.flight Python echo server do_exchange p50 {fmt_time(echo50)}; "
        f"8 KiB round trip over a plain TCP socket between two processes p50 {fmt_time(wire50)}.",
        "",
        f"Concurrency: {c['clients']} clients × {c['calls'] // c['clients']} calls, "
        f"{c['calls_per_s']:.0f} calls/s, p50 {fmt_time(c['p50'])}, p99 {fmt_time(c['p99'])}, "
        f"{c['errors']} errors.",
        "",
        "Deadlines and Ctrl+C: how long after its deadline (`timeout=`) or after SIGINT a "
        "blocking call raises `FlightTimeoutError` or `KeyboardInterrupt`, against a server "
        "that accepts connections and never answers (get, info and put in turn) and in the "
        "middle of a get or put over TCP (in turn; deadline and signal a third of a whole "
        "get's time in).",
        "",
        "| case | tries | p50 | p99 | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case, values in late.items():
        if values:
            lines.append(
                f"| {case} | {len(values)} | {fmt_time(percentile(values, 50))} | "
                f"{fmt_time(percentile(values, 99))} | {fmt_time(max(values))} |"
            )
        else:
            lines.append(f"| {case} | 0 | | | |")
    return headline, lines
