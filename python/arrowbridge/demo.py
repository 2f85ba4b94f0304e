"""The arrowbridge demo: ``python -m arrowbridge.demo`` (or ``make demo``).

Shows the three transports on the embedded defaults: in-process calls (NumPy arrays handed
to Rust kernels and pyarrow without copies, proven by data addresses), Arrow IPC files
(written from Python, memory-mapped back, read by pyarrow and by a Rust program), and the
Flight server on loopback with an in-memory store; then a kernel plugin of one's own called
in-process and over Flight. ``--plugin`` and ``--ipc-view`` name the plugin library and the
Rust reader (``make demo`` builds both and passes them); without them those parts are skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrowbridge


def _addr(x: np.ndarray) -> str:
    return hex(x.__array_interface__["data"][0])


def _per_call_ns(fn, repeat: int = 20_000) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / repeat)
    return best


def in_process() -> None:
    print("== in-process: NumPy -> Arrow -> Rust ndarray view -> NumPy ==")
    embeddings = np.random.default_rng(0).standard_normal((10_000, 768)).astype(np.float32)
    tensor = arrowbridge.to_arrow(embeddings)
    values = tensor.storage.values.buffers()[1]
    print(f"to_arrow: {tensor.type}")
    print(f"  numpy data at {_addr(embeddings)}, Arrow values at {hex(values.address)}: shared")

    same = arrowbridge.call("identity", embeddings)
    print(f"call('identity'): result at {_addr(same)} (the input's memory, read-only view)")

    fortran = np.asfortranarray(embeddings[:1000])
    print(
        f"Fortran-ordered input at {_addr(fortran)} reaches the kernel as a view: "
        f"identity -> {_addr(arrowbridge.call('identity', fortran))}"
    )

    unit = arrowbridge.call("normalize", embeddings)
    print(f"call('normalize'): row norms now {np.linalg.norm(unit[:3], axis=1).round(6)}")
    scores = arrowbridge.call("matmul", unit[:4], unit[:4].T.copy())
    print(f"call('matmul'): cosine similarities of 4 rows\n{scores.round(3)}")
    print(f"call('sum', axis=0)[:4] = {arrowbridge.call('sum', embeddings, axis=0)[:4]}")

    from_pyarrow = arrowbridge.to_numpy(pa.array(np.arange(5, dtype=np.int64)))
    print(f"to_numpy(pyarrow array) -> {from_pyarrow} (zero-copy, read-only)")

    try:
        arrowbridge.call("matmul", embeddings, embeddings)
    except arrowbridge.ShapeError as err:
        print(f"a clear error: {type(err).__name__}: {err}")

    small = np.ones(128)
    big = np.ones(64 * 1024 * 1024)  # 512 MiB
    t_small = _per_call_ns(lambda: arrowbridge.call("identity", small))
    t_big = _per_call_ns(lambda: arrowbridge.call("identity", big))
    print(
        f"per call('identity'): {t_small:.0f} ns at 1 KiB, {t_big:.0f} ns at 512 MiB "
        "(constant: nothing is copied)"
    )
    print(f"kernels: {', '.join(arrowbridge.kernels())}")


def _mapped_file(x: np.ndarray) -> str:
    """The file mapped at x's address in this process ('' if none), from /proc/self/maps."""
    addr = x.__array_interface__["data"][0]
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= addr < hi:
            return line.split(maxsplit=5)[5] if len(line.split()) >= 6 else ""
    return ""


def ipc_files(ipc_view: Path | None) -> None:
    print("\n== Arrow IPC files: write from Python, memory-map back, read anywhere ==")
    rng = np.random.default_rng(1)
    arrays = {
        "embeddings": rng.standard_normal((50_000, 256)).astype(np.float32),
        "labels": np.arange(50_000),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.arrow"
        start = time.perf_counter()
        arrowbridge.write_ipc(path, arrays)
        wrote = time.perf_counter() - start
        size = path.stat().st_size
        print(
            f"write_ipc: {size / 2**20:.1f} MiB in {wrote * 1e3:.1f} ms ({size / wrote / 1e9:.2f} GB/s)"
        )
        start = time.perf_counter()
        back = arrowbridge.read_ipc(path)
        read = time.perf_counter() - start
        mapped = any(
            str(path) in line
            for line in Path("/proc/self/maps").read_text().splitlines()
            if int(line.split("-")[0], 16)
            <= back["embeddings"].__array_interface__["data"][0]
            < int(line.split()[0].split("-")[1], 16)
        )
        print(
            f"read_ipc(mmap=True): {read * 1e6:.0f} µs; embeddings is a view of the file's mapping: {mapped}"
        )
        table = pa.ipc.open_file(path).read_all()
        print(f"pyarrow sees {table.num_rows} rows: {table.schema.field('embeddings').type}")
        result = arrowbridge.call("sum", back["embeddings"], axis=0)
        print(f"a kernel on the mapped array: sum(axis=0)[:3] = {result[:3]}")
        if ipc_view is not None:
            out = subprocess.run(
                [str(ipc_view), "read", str(path)], capture_output=True, text=True, check=True
            )
            for line in out.stdout.splitlines():
                name, dtype, *rest = line.split()
                print(
                    f"Rust (examples/ipc_view) mapped {name}: {dtype} {' '.join(rest[:-4])}, sum {rest[-4]}"
                )
        with arrowbridge.shm.create("demo", {"labels": arrays["labels"]}, replace=True) as segment:
            other = arrowbridge.shm.attach("demo").read()["labels"]
            print(
                f"shared memory {segment.path}: another reader sees {other[:5]}... ({other.nbytes} bytes, mapped)"
            )


def flight_server() -> None:
    print("\n== Arrow Flight: the Rust server on loopback, in-memory store ==")

    import pyarrow.flight as fl

    x = np.random.default_rng(2).standard_normal((8192, 1024))  # 64 MiB
    socket_dir = tempfile.mkdtemp(prefix="arrowbridge-demo-")
    transports = [
        ("TCP          ", "grpc://127.0.0.1:0", False),
        ("Unix socket  ", f"grpc+unix://{socket_dir}/flight.sock", False),
        ("shared memory", "grpc://127.0.0.1:0", True),
    ]
    for transport, location, shm in transports:
        with (
            arrowbridge.serve(location) as server,
            arrowbridge.connect(server.location, shm=shm) as c,
        ):
            puts, gets = [], []
            for _ in range(4):  # the best of four: the first warms connections and pages
                start = time.perf_counter()
                c.put("x", x)
                puts.append(time.perf_counter() - start)
                start = time.perf_counter()
                back = c.get("x")
                gets.append(time.perf_counter() - start)
            put, got = min(puts), min(gets)
            print(
                f"{transport} put 64 MiB in {put * 1e3:6.1f} ms ({x.nbytes / put / 1e9:.2f} GB/s), "
                f"get in {got * 1e3:7.3f} ms; get returned the array put: "
                f"{isinstance(back, np.ndarray) and np.array_equal(back, x)}"
            )
    os.rmdir(socket_dir)
    with arrowbridge.serve("grpc://127.0.0.1:0") as server:
        print(f"serving at {server.location}")
        client = arrowbridge.connect(server.location)
        client.put("x", x)
        print(f"stored: {[(i['name'], i['columns'][0]['shape']) for i in client.list()]}")
        col_sums = client.call("sum", client.stored("x"), axis=0)
        print(
            f"call('sum', stored x, axis=0) ran on the server: {np.allclose(col_sums, x.sum(axis=0))}"
        )
        print(
            f"call('matmul') with arrays sent along: {client.call('matmul', np.eye(2), np.ones((2, 2))).tolist()}"
        )
        raw = fl.FlightClient(server.location)
        names = [f.descriptor.path[0].decode() for f in raw.list_flights()]
        print(
            f"a plain pyarrow.flight client lists {names} and reads {raw.do_get(fl.Ticket(b'x')).read_all().num_rows} rows"
        )
        try:
            client.call("normalize", np.ones((2, 2), dtype=np.int32))
        except arrowbridge.ArrowBridgeError as err:
            print(
                f"errors come back as Flight errors: {type(err).__name__}: {str(err).splitlines()[0][:110]}"
            )


def own_kernels(plugin: Path | None) -> None:
    print("\n== Your own Rust kernels: a plugin library, loaded at run time ==")
    if plugin is None:
        print("no plugin given: `make demo` builds crates/example-kernels and passes --plugin")
        return
    print(f"load_kernels({plugin.name}) -> {arrowbridge.load_kernels(plugin)}")
    x = np.random.default_rng(3).normal(5.0, 2.0, size=(1000, 3))
    z = arrowbridge.call("zscore", x)
    print(
        f"in-process call('zscore'): column means {z.mean(axis=0).round(9)}, stds {z.std(axis=0)}"
    )
    head = arrowbridge.call("head", x, n=2)
    print(f"call('head', n=2) at {_addr(head)}, x at {_addr(x)}: the plugin returned a view")
    with arrowbridge.serve(kernels=[plugin]) as server, arrowbridge.connect(server.location) as c:
        d = c.call("pairwise_distances", x[:3], x[:2])
        print(f"over Flight, call('pairwise_distances') -> shape {d.shape}, d[0, 0] = {d[0, 0]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m arrowbridge.demo", description=__doc__)
    parser.add_argument(
        "--plugin", type=Path, help="a kernel plugin library (crates/example-kernels, built)"
    )
    parser.add_argument(
        "--ipc-view", type=Path, help="the Rust IPC reader (crates/arrowbridge/examples/ipc_view)"
    )
    args = parser.parse_args(argv)
    in_process()
    ipc_files(args.ipc_view)
    flight_server()
    own_kernels(args.plugin)


if __name__ == "__main__":
    main()
