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
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import arrowbridge_testing
import numpy as np
import pyarrow as pa
import rowstats

import arrowbridge

sys.path.insert(0, str(Path(__file__).parent))
import cluster_bench
import flight_bench
import ragged_bench
from producers import DLPackProducer

ROOT = Path(__file__).resolve().parent.parent
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
DIRECT = "rust-numpy direct (PyReadonlyArray -> view -> PyArray)"


def batch_size(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of `fn` take about `seconds` once warm.

    Timed over runs of doubling length until one lasts a millisecond, as `timeit`'s
    autorange does: the time of a single call right after another case ran includes that
    case's cold caches, and would make a batch far shorter than `seconds`.
    """
    fn()  # warm up
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= 1e-3:
            return max(1, round(seconds * n / elapsed))
        n *= 2


def measure(
    cases: dict[str, Callable[[], object]], budget_s: float
) -> dict[str, tuple[float, float]]:
    """Median and interquartile range of one call's time, in seconds, for each case.

    The cases are measured in interleaved rounds, so that a change in the machine's state
    (frequency, a neighbour's load) hits them all alike, in a new order each round: in a
    fixed order, a case always follows the same one, and at sizes near the cache's the
    first of two cases that read the same array pays for bringing it in (up to 1.6× in
    either direction). Fast calls are timed in batches so that the clock's resolution does
    not matter.
    """
    batches = {name: batch_size(fn, 2e-3) for name, fn in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.perf_counter() + budget_s * len(cases)
    order = list(cases)
    shuffle = random.Random(0).shuffle
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 200):
        shuffle(order)
        for name in order:
            fn, batch = cases[name], batches[name]
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
SUM = 'arrowbridge.call("sum", axis=0)'
DIRECT_SUM = "rust-numpy sum(axis=0), written the same way"
DLPACK_IN = "arrowbridge.to_numpy(a DLPack producer)"
NP_DLPACK_IN = "np.from_dlpack(the same producer)"
EXTENSION = "extension function, ArrayArg argument (rowstats.total)"
EXTENSION_NUMPY = "extension function, rust-numpy PyReadonlyArray (rowstats.total_numpy)"


def in_process_cases(x: np.ndarray) -> dict[str, Callable[[], object]]:
    """The ways to hand `x` to native code and get an array back, fastest first."""
    t = arrowbridge.to_arrow(x)
    producer = DLPackProducer(x)
    return {
        'arrowbridge.call("identity")': lambda: arrowbridge.call("identity", x),
        DIRECT: lambda: arrowbridge_testing.rust_numpy_identity(x),
        SUM: lambda: arrowbridge.call("sum", x, axis=0),
        DIRECT_SUM: lambda: arrowbridge_testing.rust_numpy_sum(x, axis=0),
        PLUGIN_CALL: lambda: arrowbridge.call("head", x, n=len(x)),
        "arrowbridge.to_arrow": lambda: arrowbridge.to_arrow(x),
        "arrowbridge.to_numpy": lambda: arrowbridge.to_numpy(t),
        "pyarrow FixedShapeTensorArray.from_numpy_ndarray": lambda: (
            pa.FixedShapeTensorArray.from_numpy_ndarray(x)
        ),
        "pyarrow from_numpy_ndarray + arrow-rs import (C Data Interface)": lambda: (
            arrowbridge.to_numpy(pa.FixedShapeTensorArray.from_numpy_ndarray(x))
        ),
        DLPACK_IN: lambda: arrowbridge.to_numpy(producer),
        NP_DLPACK_IN: lambda: np.from_dlpack(producer),
        EXTENSION: lambda: rowstats.total(x),
        EXTENSION_NUMPY: lambda: rowstats.total_numpy(x),
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


def instruction_table() -> list[str]:
    """Instruction counts now, before the hot-path work, and the gate's baselines."""
    import json
    import shutil

    import instructions

    if shutil.which("valgrind") is None:
        return ["valgrind is not installed: no instruction counts."]
    now = instructions.measure()
    before = json.loads(instructions.BASELINES.with_name("instructions-before.json").read_text())
    baseline = json.loads(instructions.BASELINES.read_text())
    lines = [
        "| path | before | now | now / before | gate baseline |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, count in now.items():
        old, gate = before.get(name), baseline.get(name)
        change = f"{count / old:.2f}×" if old else ""
        old_s = f"{old:,}" if old else "(new)"
        gate_s = f"{gate:,}" if gate else ""
        lines.append(f"| {name} | {old_s} | {count:,.0f} | {change} | {gate_s} |")
    return lines


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
        f"arrowbridge {arrowbridge.__version__}. {speed_check()}"
    )


def speed_check() -> str:
    """How fast this machine ran at the start of the run: a shared VM's speed changes from
    day to day (2.5x for CPU-bound work between two sessions on the benchmark VM), which
    moves every absolute figure; the ratios within one run compare like with like."""
    python = flight_bench.median_time(lambda: sum(range(1000)), 2000)
    src = np.ones(8 << 20)  # 64 MiB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy = flight_bench.median_time(lambda: np.copyto(dst, src), 20)
    return (
        f"Speed check at the start: `sum(range(1000))` {python * 1e6:.1f} µs, a 64 MiB copy "
        f"{src.nbytes / copy / 1e9:.1f} GB/s (absolute figures move with these between runs)"
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
        f'- `call("identity")` / rust-numpy direct path, by size: {ratios} (target ≤ 1.5×).',
        '- `call("sum", axis=0)` / the same sum written with rust-numpy, by size: '
        + ", ".join(
            f"{by[(SUM, s)] / by[(DIRECT_SUM, s)]:.2f}×" for s in sorted({r["size"] for r in rows})
        )
        + " (target ≤ 1.5×).",
        "- DLPack import, `to_numpy` / `np.from_dlpack` of the same producer, by size: "
        + ", ".join(
            f"{by[(DLPACK_IN, s)] / by[(NP_DLPACK_IN, s)]:.2f}×"
            for s in sorted({r["size"] for r in rows})
        )
        + " (target ≤ 1.5×).",
        "- An extension function taking `ArrayArg` / the same function taking rust-numpy's "
        "`PyReadonlyArray`, by size: "
        + ", ".join(
            f"{by[(EXTENSION, s)] / by[(EXTENSION_NUMPY, s)]:.2f}× at {fmt_size(s)}"
            for s in sorted({r["size"] for r in rows})
        )
        + " (target ≤ 1.2×).",
        f"- A kernel in a plugin library (`head`, a view, through the plugin ABI both "
        f"ways) costs {fmt_time(by[(PLUGIN_CALL, small)])} per call at {fmt_size(small)} "
        f"(target ≤ 2 µs), {fmt_time(by[(PLUGIN_CALL, small)] - call[0])} more than a built-in "
        "kernel.",
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

    def per_size(ours: str, other: str, by: dict) -> str:
        return ", ".join(
            f"{by[(other, s)] / by[(ours, s)]:.2f}× at {fmt_size(s)}" for s in measured
        )

    headline += [
        "- Throughput of write_ipc / np.save's: "
        + per_size("arrowbridge.write_ipc", "np.save", wby)
        + "; / pyarrow's IPC writer's: "
        + per_size("arrowbridge.write_ipc", "pyarrow ipc.new_file (from_numpy_ndarray)", wby)
        + " (target ≥ 1.0×).",
        "- Throughput of read_ipc(mmap=False) / np.load's: "
        + per_size("arrowbridge.read_ipc(mmap=False)", "np.load", rby)
        + " (target ≥ 1.0×).",
        f"- write_ipc of {fmt_size(big)}: {big / ours_w / 1e9:.2f} GB/s, "
        f"{vs_npsave:.2f}× np.save's throughput, {vs_pyarrow:.2f}× pyarrow's IPC writer's.",
        f"- read_ipc(mmap=True): {read_times}; "
        f"{rby[('np.load', big)] / ours_r[big]:.0f}× faster than np.load at {fmt_size(big)}.",
    ]
    print("ragged ...", file=sys.stderr)
    headline += ragged_bench.report(ragged_bench.run(args.quick))
    print("flight ...", file=sys.stderr)
    flight_sizes = [32 * MIB] if args.quick else [256 * MIB, GIB]
    fr = flight_bench.run(
        flight_sizes,
        repeats=3 if args.quick else 5,
        concurrency=(8, 25) if args.quick else (32, 200),
        small_n=100 if args.quick else 500,
        # A 4 GiB item through a client limited to 3 GiB of address space (quick: 256 MiB).
        bounded=(256 * MIB, 3 * GIB) if args.quick else (4 * GIB, 3 * GIB),
        # Deadlines and Ctrl+C: 100 tries of each case, mid-transfer of 1 GiB (quick: 10, 64 MiB).
        interrupted=(64 * MIB, 10) if args.quick else (GIB, 100),
    )
    flight_headline, flight_rows = flight_bench.report(fr, fmt_time)
    headline += flight_headline
    cluster_headline, cluster_rows = cluster_bench.report(
        cluster_bench.run(args.quick), fmt_size, fmt_time
    )
    headline += cluster_headline
    instruction_rows = instruction_table()
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
            "## Instructions per call (callgrind)",
            "",
            "Counted by `benchmarks/instructions.py` (the gate `make test` runs: a rise of more "
            "than 10 % over the committed baseline fails), 1 KiB inputs, everything the call "
            "executes (CPython, PyO3, arrowbridge, NumPy). *Before* is commit f4c1dac, before "
            "the hot-path work of issue #15.",
            "",
            *instruction_rows,
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
            "## Flight on loopback: float64 (n, 1024) tensor, NumPy in and out",
            "",
            "Servers in processes of their own; median over repeated transfers. pyarrow.flight's "
            "client sends in 8 MiB chunks; its server is pyarrow.flight's Python FlightServerBase.",
            "",
            "Every put needs memory for the item it lands (a get, for its result). Pages a "
            "process never touched before cost a page fault each, and on a VM whose host "
            "reclaims the guest's free memory (free page reporting) a first touch ran at "
            "0.4 GB/s in this machine's probes. The extension keeps freed blocks of 32 MiB or "
            "more for a second (`arrowbridge_pyo3::Recycling`), so from the second transfer of "
            "a size on, transfers land in warm pages; each figure is the median of several "
            "after one unmeasured transfer. The host's load still moves bulk figures by ±20 % "
            "between runs, which is why iperf3 runs right before and after each size.",
            "",
            *flight_rows,
            "",
            "## Sharded items: servers in processes of their own, float64 (n, 1024)",
            "",
            "Median over repeated calls; the cluster client (arrowbridge.cluster.ClusterClient) "
            "against one server and the plain client in the same run.",
            "",
            *cluster_rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plots = args.out.parent / "benchmarks"
    plots.mkdir(exist_ok=True)
    plot_sizes(rows, "In-process: NumPy -> Rust -> NumPy, per call", plots / "in_process.png")
    plot_sizes(reads, "Reading a float64 tensor file on tmpfs", plots / "file_read.png")
    plot_sizes(writes, "Writing a float64 tensor file on tmpfs", plots / "file_write.png")
    biggest = max(fr["sizes"])
    plot_bars(
        {
            f"{path} {way}": biggest / t / 1e9
            for path, times in fr["sizes"][biggest].items()
            for way, t in zip(("put", "get"), times, strict=True)
            if t == t and "shared memory" not in path  # O(1) gets would flatten the plot
        },
        f"Flight on loopback, {fmt_size(biggest)}: throughput",
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
