"""arrowbridge benchmarks: every path against its alternatives, in one run, on the same data.

    python benchmarks/run.py            # full run (sizes up to 1 GiB)
    python benchmarks/run.py --quick    # under a minute; CI runs this so the suite never rots

Writes docs/benchmarks.md (regenerated, never edited by hand) and prints the same tables.
Times are medians over repeated runs; the spread is the interquartile range.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrowbridge
from arrowbridge import _native

ROOT = Path(__file__).resolve().parent.parent
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
DIRECT = "rust-numpy direct (PyReadonlyArray -> view -> PyArray)"


def measure(
    cases: dict[str, Callable[[], object]], budget_s: float
) -> dict[str, tuple[float, float]]:
    """Median and interquartile range of one call's time, in seconds, for each case.

    The cases are measured in interleaved rounds, so that a change in the machine's state
    (frequency, a neighbour's load) hits them all alike; fast calls are timed in batches
    so that the clock's resolution does not matter.
    """
    batches = {}
    for name, fn in cases.items():
        fn()  # warm up
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        batches[name] = max(1, int(2e-3 / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.perf_counter() + budget_s * len(cases)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 200):
        for name, fn in cases.items():
            batch = batches[name]
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[name].append((time.perf_counter() - t0) / batch)
        rounds += 1
    result = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4)
        result[name] = (statistics.median(values), q[2] - q[0])
    return result


def fmt_time(t: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def fmt_size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n // scale} {unit}"
    return f"{n} B"


# The example kernel plugin (make build builds it): `head` returns a view of its input, so
# the case measures what crossing into a plugin library and back costs.
PLUGIN = ROOT / "target" / "release" / "libarrowbridge_example_kernels.so"
PLUGIN_CALL = 'arrowbridge.call("head"), a kernel in a plugin library'


def in_process_cases(x: np.ndarray) -> dict[str, Callable[[], object]]:
    """The ways to hand `x` to native code and get an array back, fastest first."""
    t = arrowbridge.to_arrow(x)
    return {
        'arrowbridge.call("identity")': lambda: arrowbridge.call("identity", x),
        DIRECT: lambda: _native.rust_numpy_identity(x),
        PLUGIN_CALL: lambda: arrowbridge.call("head", x, n=len(x)),
        "arrowbridge.to_arrow": lambda: arrowbridge.to_arrow(x),
        "arrowbridge.to_numpy": lambda: arrowbridge.to_numpy(t),
        "pyarrow FixedShapeTensorArray.from_numpy_ndarray": lambda: (
            pa.FixedShapeTensorArray.from_numpy_ndarray(x)
        ),
        "pyarrow from_numpy_ndarray + arrow-rs import (C Data Interface)": lambda: (
            arrowbridge.to_numpy(pa.FixedShapeTensorArray.from_numpy_ndarray(x))
        ),
        "np.from_dlpack": lambda: np.from_dlpack(x),
        "pickle protocol 5 (dumps + loads)": lambda: pickle.loads(pickle.dumps(x, protocol=5)),
        "tobytes + frombuffer": lambda: np.frombuffer(x.tobytes(), x.dtype).reshape(x.shape),
        "memcpy (np.copy): the physical limit": lambda: x.copy(),
    }


def in_process(sizes: list[int], budget: float) -> list[dict]:
    """Per-call cost of handing a float64 (n, 128) array to Rust and back."""
    rows = []
    for nbytes in sizes:
        x = np.random.default_rng(0).standard_normal((max(1, nbytes // (8 * 128)), 128))
        for name, (median, iqr) in measure(in_process_cases(x), budget).items():
            rows.append({"size": x.nbytes, "case": name, "median": median, "iqr": iqr})
        print(f"  measured {fmt_size(x.nbytes)}", file=sys.stderr)
    return rows


def file_cases(x: np.ndarray, tmp: Path) -> tuple[dict, dict]:
    """Writers and readers of one float64 tensor, each on its own file in `tmp` (tmpfs)."""
    import pyarrow.feather as feather
    from safetensors.numpy import load_file, save_file

    paths = {k: tmp / f"bench.{k}" for k in ("arrow", "lz4", "zstd", "npy", "pa", "st", "feather")}

    def pa_write():
        t = pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})
        with pa.ipc.new_file(paths["pa"], t.schema) as w:
            w.write_table(t)

    writers = {
        "arrowbridge.write_ipc": lambda: arrowbridge.write_ipc(paths["arrow"], {"x": x}),
        "arrowbridge.write_ipc(lz4)": lambda: arrowbridge.write_ipc(
            paths["lz4"], {"x": x}, compression="lz4"
        ),
        "arrowbridge.write_ipc(zstd)": lambda: arrowbridge.write_ipc(
            paths["zstd"], {"x": x}, compression="zstd"
        ),
        "np.save": lambda: np.save(paths["npy"], x),
        "pyarrow ipc.new_file (from_numpy_ndarray)": pa_write,
        "pyarrow feather.write_feather": lambda: feather.write_feather(
            pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x)}), paths["feather"]
        ),
        "safetensors save_file": lambda: save_file({"x": x}, str(paths["st"])),
    }
    for fn in writers.values():
        fn()

    def pa_read():
        with pa.memory_map(str(paths["pa"])) as source:
            return pa.ipc.open_file(source).read_all()["x"].chunk(0).to_numpy_ndarray()

    readers = {
        "arrowbridge.read_ipc(mmap=True)": lambda: arrowbridge.read_ipc(paths["arrow"])["x"],
        "Rust read_ipc + view (IpcReader.describe)": lambda: arrowbridge.IpcReader(
            str(paths["arrow"])
        ).describe(),
        "arrowbridge.read_ipc(mmap=False)": lambda: arrowbridge.read_ipc(
            paths["arrow"], mmap=False
        )["x"],
        "arrowbridge.read_ipc(lz4)": lambda: arrowbridge.read_ipc(paths["lz4"])["x"],
        "arrowbridge.read_ipc(zstd)": lambda: arrowbridge.read_ipc(paths["zstd"])["x"],
        "np.load": lambda: np.load(paths["npy"]),
        "np.load(mmap_mode='r')": lambda: np.load(paths["npy"], mmap_mode="r"),
        "pyarrow memory_map + to_numpy_ndarray": pa_read,
        "safetensors load_file": lambda: load_file(str(paths["st"]))["x"],
    }
    return writers, readers


def files(sizes: list[int], budget: float) -> tuple[list[dict], list[dict]]:
    import tempfile

    tmpfs = "/dev/shm" if Path("/dev/shm").is_dir() else None
    writes, reads = [], []
    with tempfile.TemporaryDirectory(dir=tmpfs) as tmp:
        for nbytes in sizes:
            x = np.random.default_rng(0).standard_normal((max(1, nbytes // (8 * 1024)), 1024))
            writers, readers = file_cases(x, Path(tmp))
            for name, (median, iqr) in measure(writers, budget).items():
                writes.append({"size": x.nbytes, "case": name, "median": median, "iqr": iqr})
            for name, (median, iqr) in measure(readers, budget).items():
                reads.append({"size": x.nbytes, "case": name, "median": median, "iqr": iqr})
            print(f"  measured files of {fmt_size(x.nbytes)}", file=sys.stderr)
    return writes, reads


class PyFlightEcho:
    """A pyarrow.flight server in Python doing the same work: store on put, serve on get,
    echo on exchange."""

    def __new__(cls, location: str):
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

        return Echo(location)


def raw_socket_throughput(nbytes: int) -> float:
    """Seconds to send `nbytes` over loopback TCP with plain sockets (the transport's limit)."""
    import socket
    import threading

    payload = np.ones(nbytes, dtype=np.uint8)
    server = socket.create_server(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    port = server.getsockname()[1]
    received = np.empty(nbytes, dtype=np.uint8)
    received.fill(0)  # fault the pages in now: Flight's receive buffers are warm, so are these

    def receive():
        conn, _ = server.accept()
        view, got = memoryview(received), 0
        while got < nbytes:
            got += conn.recv_into(view[got:], min(nbytes - got, 16 << 20))
        conn.sendall(b"k")
        conn.close()

    t = threading.Thread(target=receive)
    t.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        c.sendall(payload)
        c.recv(1)
    elapsed = time.perf_counter() - start
    t.join()
    server.close()
    return elapsed


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def flight_bench(nbytes: int, repeats: int, concurrency: tuple[int, int]) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.flight as fl

    x = np.random.default_rng(0).standard_normal((nbytes // (8 * 1024), 1024))
    table = pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})
    results: dict = {"size": x.nbytes}

    def best(fn, n=repeats):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def raw_put_get(location: str) -> tuple[float, float]:
        client = fl.FlightClient(location)

        def put():
            w, _reader = client.do_put(fl.FlightDescriptor.for_path("bench"), table.schema)
            w.write_table(table, max_chunksize=max(1, (8 << 20) // (8 * 1024)))
            w.close()

        def get():
            return client.do_get(fl.Ticket(b"bench")).read_all()

        return best(put), best(get)

    small = np.ones(1024)  # 8 KiB

    def latencies(call, n=300) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
        return out

    with arrowbridge.serve() as server:
        ours = arrowbridge.connect(server.location)
        results["ours put (arrowbridge client)"] = best(lambda: ours.put("bench2", x))
        results["ours get (arrowbridge client)"] = best(lambda: ours.get("bench2"))
        results["ours put (pyarrow client)"], results["ours get (pyarrow client)"] = raw_put_get(
            server.location
        )
        ours.call("identity", small)
        lat = latencies(lambda: ours.call("identity", small))
        results["ours call p50"], results["ours call p99"] = (
            percentile(lat, 50),
            percentile(lat, 99),
        )

        clients, calls = concurrency
        errors = []

        def worker(_):
            c = arrowbridge.connect(server.location)
            out = []
            for _ in range(calls):
                t0 = time.perf_counter()
                try:
                    c.call("identity", small)
                except Exception as e:
                    errors.append(repr(e))
                out.append(time.perf_counter() - t0)
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            all_lat = [v for chunk in pool.map(worker, range(clients)) for v in chunk]
        wall = time.perf_counter() - t0
        results["concurrent"] = {
            "clients": clients,
            "calls": clients * calls,
            "errors": len(errors),
            "calls_per_s": clients * calls / wall,
            "p50": percentile(all_lat, 50),
            "p99": percentile(all_lat, 99),
        }

    echo = PyFlightEcho("grpc://127.0.0.1:0")
    try:
        location = f"grpc://127.0.0.1:{echo.port}"
        results["pyarrow.flight put"], results["pyarrow.flight get"] = raw_put_get(location)
        client = fl.FlightClient(location)
        echo_table = pa.table({"x": small})

        def echo_call():
            w, r = client.do_exchange(fl.FlightDescriptor.for_command(b"echo"))
            w.begin(echo_table.schema)
            w.write_table(echo_table)
            w.done_writing()
            r.read_all()
            w.close()

        echo_call()
        lat = latencies(echo_call)
        results["pyarrow.flight exchange p50"] = percentile(lat, 50)
    finally:
        echo.shutdown()
    results["raw socket"] = best(lambda: raw_socket_throughput(x.nbytes))
    return results


def plot_sizes(rows: list[dict], title: str, path: Path) -> None:
    """Time against size, log-log: constant costs are flat lines, copies rise with size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for case in dict.fromkeys(r["case"] for r in rows):
        points = sorted((r["size"], r["median"]) for r in rows if r["case"] == case)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=case)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("array size (bytes)")
    ax.set_ylabel("median time per operation (s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(values: dict[str, float], title: str, unit: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict], baseline: str) -> str:
    sizes = sorted({r["size"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    by = {(r["case"], r["size"]): r for r in rows}
    head = "| path | " + " | ".join(fmt_size(s) for s in sizes) + " |"
    lines = [head, "|" + " --- |" * (len(sizes) + 1)]
    for case in cases:
        cells = []
        for s in sizes:
            r = by[(case, s)]
            ratio = r["median"] / by[(baseline, s)]["median"]
            cells.append(f"{fmt_time(r['median'])} ±{fmt_time(r['iqr'])} ({ratio:.2g}×)")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; {platform.platform()}; "
        f"Python {platform.python_version()}, NumPy {np.__version__}, pyarrow {pa.__version__}, "
        f"arrowbridge {arrowbridge.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short budgets (< 1 minute)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    sizes = [KIB, MIB, 64 * MIB] if args.quick else [KIB, 64 * KIB, MIB, 16 * MIB, 256 * MIB, GIB]
    budget = 0.2 if args.quick else 1.0
    print("in-process ...", file=sys.stderr)
    arrowbridge.load_kernels(PLUGIN)
    rows = in_process(sizes, budget)
    baseline = DIRECT

    by = {(r["case"], r["size"]): r["median"] for r in rows}
    call = [by[('arrowbridge.call("identity")', s)] for s in sorted({r["size"] for r in rows})]
    direct = [by[(baseline, s)] for s in sorted({r["size"] for r in rows})]
    small, large = min(r["size"] for r in rows), max(r["size"] for r in rows)
    ratios = ", ".join(f"{c / d:.2f}×" for c, d in zip(call, direct, strict=True))
    headline = [
        f'- `call("identity")` costs {fmt_time(call[0])} at {fmt_size(small)} and '
        f"{fmt_time(call[-1])} at {fmt_size(large)}: "
        f"largest / smallest = {call[-1] / call[0]:.2f}×.",
        f'- `call("identity")` / rust-numpy direct path, by size: {ratios}.',
        f"- A kernel in a plugin library (`head`, a view, through the C Data Interface both "
        f"ways) costs {fmt_time(by[(PLUGIN_CALL, small)])} per call at {fmt_size(small)}, "
        f"{fmt_time(by[(PLUGIN_CALL, small)] - call[0])} more than a built-in kernel.",
    ]
    print("files ...", file=sys.stderr)
    file_sizes = [16 * MIB, 64 * MIB] if args.quick else [MIB, 16 * MIB, 256 * MIB, GIB]
    writes, reads = files(file_sizes, budget)
    wby = {(r["case"], r["size"]): r["median"] for r in writes}
    rby = {(r["case"], r["size"]): r["median"] for r in reads}
    measured = sorted({r["size"] for r in writes})
    big = measured[-1]
    ours_w = wby[("arrowbridge.write_ipc", big)]
    ours_r = {s: rby[("arrowbridge.read_ipc(mmap=True)", s)] for s in measured}
    vs_npsave = wby[("np.save", big)] / ours_w
    vs_pyarrow = wby[("pyarrow ipc.new_file (from_numpy_ndarray)", big)] / ours_w
    read_times = ", ".join(f"{fmt_time(t)} at {fmt_size(s)}" for s, t in ours_r.items())
    headline += [
        f"- write_ipc of {fmt_size(big)}: {big / ours_w / 1e9:.2f} GB/s, "
        f"{vs_npsave:.2f}× np.save's throughput, {vs_pyarrow:.2f}× pyarrow's IPC writer's.",
        f"- read_ipc(mmap=True): {read_times}; "
        f"{rby[('np.load', big)] / ours_r[big]:.0f}× faster than np.load at {fmt_size(big)}.",
    ]
    print("flight ...", file=sys.stderr)
    flight_size = 32 * MIB if args.quick else 256 * MIB
    fr = flight_bench(flight_size, 3 if args.quick else 5, (8, 25) if args.quick else (32, 200))
    gbs = {
        k: fr["size"] / v / 1e9
        for k, v in fr.items()
        if isinstance(v, float) and "p50" not in k and "p99" not in k
    }
    conc = fr["concurrent"]
    flight_rows = [
        "| path | put GB/s | get GB/s |",
        "| --- | --- | --- |",
        f"| arrowbridge server, arrowbridge client (NumPy in/out) | {gbs['ours put (arrowbridge client)']:.2f} "
        f"| {gbs['ours get (arrowbridge client)']:.2f} |",
        f"| arrowbridge server, pyarrow.flight client | {gbs['ours put (pyarrow client)']:.2f} "
        f"| {gbs['ours get (pyarrow client)']:.2f} |",
        f"| pyarrow.flight Python server, pyarrow.flight client | {gbs['pyarrow.flight put']:.2f} "
        f"| {gbs['pyarrow.flight get']:.2f} |",
        f"| raw loopback TCP socket (one way) | {gbs['raw socket']:.2f} | {gbs['raw socket']:.2f} |",
    ]
    headline += [
        f"- Flight {fmt_size(fr['size'])}: put {gbs['ours put (pyarrow client)']:.2f} GB/s "
        f"({gbs['ours put (pyarrow client)'] / gbs['pyarrow.flight put']:.2f}× the pyarrow.flight server, "
        f"{gbs['ours put (pyarrow client)'] / gbs['raw socket']:.0%} of raw TCP), get "
        f"{gbs['ours get (pyarrow client)']:.2f} GB/s "
        f"({gbs['ours get (pyarrow client)'] / gbs['pyarrow.flight get']:.2f}×, "
        f"{gbs['ours get (pyarrow client)'] / gbs['raw socket']:.0%} of raw TCP).",
        f"- Small call (8 KiB identity): p50 {fmt_time(fr['ours call p50'])} vs pyarrow.flight echo "
        f"{fmt_time(fr['pyarrow.flight exchange p50'])} "
        f"({fr['ours call p50'] / fr['pyarrow.flight exchange p50']:.2f}×).",
        f"- {conc['clients']} concurrent clients × {conc['calls'] // conc['clients']} calls: "
        f"{conc['calls_per_s']:.0f} calls/s, p99 {fmt_time(conc['p99'])}, {conc['errors']} errors.",
    ]
    report = "\n".join(
        [
            "# arrowbridge benchmarks",
            "",
            "Generated by `make bench`"
            + (" (quick mode)" if args.quick else "")
            + "; do not edit by hand.",
            "",
            f"Machine: {machine()}.",
            "",
            "## Headlines",
            "",
            *headline,
            "",
            "## In-process: one call, NumPy float64 (n, 128) -> Rust -> NumPy",
            "",
            "Median per call ± interquartile range, and the ratio to the rust-numpy direct path.",
            "",
            table(rows, baseline),
            "",
            "## Files on tmpfs: write (float64 (n, 1024) tensor)",
            "",
            "Median per write ± interquartile range, and the ratio to np.save.",
            "",
            table(writes, "np.save"),
            "",
            "## Files on tmpfs: read to a NumPy array",
            "",
            "Median per read ± interquartile range, and the ratio to np.load (reads every byte).",
            "",
            table(reads, "np.load"),
            "",
            f"## Flight on loopback: {fmt_size(fr['size'])} float64 tensor",
            "",
            "Median over repeated transfers. The pyarrow.flight client sends in 8 MiB chunks.",
            "",
            *flight_rows,
            "",
            f"Small calls: arrowbridge `call('identity')` of 8 KiB p50 {fmt_time(fr['ours call p50'])}, "
            f"p99 {fmt_time(fr['ours call p99'])}; pyarrow.flight Python echo server do_exchange p50 "
            f"{fmt_time(fr['pyarrow.flight exchange p50'])}.",
            "",
            f"Concurrency: {conc['clients']} clients × {conc['calls'] // conc['clients']} calls, "
            f"{conc['calls_per_s']:.0f} calls/s, p50 {fmt_time(conc['p50'])}, p99 {fmt_time(conc['p99'])}, "
            f"{conc['errors']} errors.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plots = args.out.parent / "benchmarks"
    plots.mkdir(exist_ok=True)
    plot_sizes(rows, "In-process: NumPy -> Rust -> NumPy, per call", plots / "in_process.png")
    plot_sizes(reads, "Reading a float64 tensor file on tmpfs", plots / "file_read.png")
    plot_sizes(writes, "Writing a float64 tensor file on tmpfs", plots / "file_write.png")
    plot_bars(
        {k: v for k, v in gbs.items()},
        f"Flight on loopback, {fmt_size(fr['size'])}: throughput",
        "GB/s",
        plots / "flight.png",
    )
    report += "\n".join(
        [
            "",
            "## Plots",
            "",
            "![in-process](benchmarks/in_process.png)",
            "![file reads](benchmarks/file_read.png)",
            "![file writes](benchmarks/file_write.png)",
            "![flight](benchmarks/flight.png)",
            "",
        ]
    )
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
