"""Ragged data (`arrow.variable_shape_tensor`): the issue #30 targets, measured in one run.

- `to_arrow(list of n arrays)` against `np.concatenate` of the same list (both copy the bytes
  once; the ratio is of throughputs, target >= 0.8x);
- `to_numpy` of the result back to n views (target <= 1 us per element);
- `variable_shape_tensor(values, shapes)` + `to_numpy(..., ragged=True)` at 1 KiB and 1 GiB of
  values (target: within 1.2x, i.e. O(1) in the data size).

Run alone: `python benchmarks/ragged_bench.py [--quick]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from flight_bench import medians_interleaved

import arrowbridge


def median_of(fn, repeats: int) -> float:
    """The median of `repeats` timings of `fn()` after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False) -> dict[str, float]:
    n, element = (2_000, 64 << 10) if quick else (10_000, 64 << 10)
    repeats = 5 if quick else 11
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(element // 8).reshape(-1, 8 << (i % 4)) for i in range(n)]
    total = sum(a.nbytes for a in arrays)
    to_arrow = median_of(lambda: arrowbridge.to_arrow(arrays), repeats)
    concat = median_of(lambda: np.concatenate([a.reshape(-1) for a in arrays]), repeats)
    # The same copy into memory already faulted in (to_arrow's allocator reuses warm pages).
    out = np.empty(total // 8)
    concat_out = median_of(
        lambda: np.concatenate([a.reshape(-1) for a in arrays], out=out), repeats
    )
    t = arrowbridge.to_arrow(arrays)
    to_numpy = median_of(lambda: arrowbridge.to_numpy(t), repeats)

    def parts(size: int):
        values = np.empty(size // 4, np.float32)
        shapes = np.array([[size // 4 // 64 // 4, 4]] * 64)

        def go():
            r = arrowbridge.variable_shape_tensor(values, shapes)
            arrowbridge.to_numpy(r, ragged=True)

        return go

    small = median_of(parts(1 << 10), 51)
    big = median_of(parts(1 << 30), 51)
    ipc = ipc_times((64 << 20) if quick else (1 << 30), 3 if quick else 5)
    flight = flight_times((64 << 20) if quick else (1 << 30), 3 if quick else 5)
    return {
        "n": n,
        "element": element,
        "bytes": total,
        "to_arrow": to_arrow,
        "concatenate": concat,
        "concatenate_out": concat_out,
        "to_numpy": to_numpy,
        "parts_1KiB": small,
        "parts_1GiB": big,
        **ipc,
        **flight,
    }


def ipc_times(size: int, repeats: int) -> dict[str, float]:
    """write_ipc and read_ipc (mmap=False, so that the bytes are read) of `size` bytes as a
    ragged column of 1,024 rows of different shapes and as a dense tensor."""
    import tempfile
    from pathlib import Path

    dense, ragged, ragged_bytes = _same_bytes(size)
    out = {"ipc_bytes": size, "ipc_ragged_bytes": ragged_bytes}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data, nbytes in [("dense", dense, size), ("ragged", ragged, ragged_bytes)]:
            path = Path(tmp) / f"{name}.arrow"
            out[f"ipc_write_{name}"] = (
                median_of(lambda d=data, p=path: arrowbridge.write_ipc(p, {"x": d}), repeats)
                / nbytes
            )
            out[f"ipc_read_{name}"] = (
                median_of(lambda p=path: arrowbridge.read_ipc(p, mmap=False), repeats) / nbytes
            )
    return out


def _same_bytes(size: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """`size` bytes as a dense (1024, k) tensor and as 1,024 rows of four widths (k/2, 3k/2,
    3k/4, 5k/4: the ragged list), both views of the same values, every byte in each."""
    rows = 1024
    per_row = size // 8 // rows
    flat = np.random.default_rng(1).standard_normal(per_row * rows)
    widths = [per_row * (2, 6, 3, 5)[i % 4] // 4 for i in range(rows)]
    ends = np.cumsum(widths)
    ragged = [flat[e - w : e].reshape(-1, 1) for e, w in zip(ends, widths, strict=True)]
    return flat.reshape(rows, per_row), ragged, sum(r.nbytes for r in ragged)


def flight_times(size: int, repeats: int) -> dict[str, float]:
    """Flight put and get over TCP on loopback (the server in another process, gRPC: shared
    memory carries tensors only, so the dense item goes by gRPC too) of `size` bytes as a
    ragged column and as a dense tensor, time per byte."""
    from flight_bench import location_of, ours, process

    dense, ragged, ragged_bytes = _same_bytes(size)
    out = {"flight_bytes": size}
    with process(ours("--port", "0")) as (_, line):
        with arrowbridge.connect(location_of(line), shm=False) as client:
            # The same ragged column already in Arrow (to_arrow's result): no copy to make.
            sent = {
                "dense": (dense, size),
                "ragged": (ragged, ragged_bytes),
                "ragged_arrow": (arrowbridge.to_arrow(ragged), ragged_bytes),
            }
            # Each put stores a new item (the last one deleted, untimed): a put that replaces
            # an item allocates while the old version lives, so whether the allocator still
            # holds pages freed a round earlier would decide the time, not the transfer.
            puts = medians_interleaved(
                {name: lambda n=name, d=data: client.put(n, d) for name, (data, _) in sent.items()},
                repeats,
                before=client.delete,
            )
            # Gets one kind at a time: each get lands in pages the allocator keeps for a
            # second after the last get of that kind freed them, as a client that gets an
            # item again and again does.
            gets = {
                name: median_of(lambda n=name: client.get(n), repeats)
                for name in ("dense", "ragged")
            }
            for name, (_, nbytes) in sent.items():
                out[f"flight_put_{name}"] = puts[name] / nbytes
                if name in gets:
                    out[f"flight_get_{name}"] = gets[name] / nbytes
    return out


def report(r: dict[str, float]) -> list[str]:
    gbps = lambda t: r["bytes"] / t / 1e9  # noqa: E731
    return [
        f"- `to_arrow` of {r['n']:,} arrays of {r['element'] >> 10} KiB: "
        f"{gbps(r['to_arrow']):.2f} GB/s, `np.concatenate` of the same list "
        f"{gbps(r['concatenate']):.2f} GB/s into a new array, "
        f"{gbps(r['concatenate_out']):.2f} GB/s into a warm one (`out=`): "
        f"{r['concatenate'] / r['to_arrow']:.2f}x and {r['concatenate_out'] / r['to_arrow']:.2f}x "
        "their throughput (target >= 0.8x).",
        f"- `to_numpy` back to {r['n']:,} views: {r['to_numpy'] / r['n'] * 1e9:.0f} ns per "
        "element (target <= 1 us).",
        f"- `variable_shape_tensor` + `to_numpy(ragged=True)` of 64 rows: "
        f"{r['parts_1KiB'] * 1e6:.1f} us at 1 KiB, {r['parts_1GiB'] * 1e6:.1f} us at 1 GiB: "
        f"{r['parts_1GiB'] / r['parts_1KiB']:.2f}x (target <= 1.2x).",
        f"- IPC of {r['ipc_bytes'] >> 20} MiB, ragged column / dense tensor, time per byte: "
        f"write_ipc {r['ipc_write_ragged'] / r['ipc_write_dense']:.2f}x, "
        f"read_ipc(mmap=False) {r['ipc_read_ragged'] / r['ipc_read_dense']:.2f}x "
        "(target <= 1.2x).",
        f"- Flight over TCP of {r['flight_bytes'] >> 20} MiB, ragged column / dense tensor, "
        f"time per byte: put of the list {r['flight_put_ragged'] / r['flight_put_dense']:.2f}x "
        "(each array sent where it lies), of the same column already in Arrow "
        f"{r['flight_put_ragged_arrow'] / r['flight_put_dense']:.2f}x, "
        f"get {r['flight_get_ragged'] / r['flight_get_dense']:.2f}x (target <= 1.2x; "
        f"dense {1 / r['flight_put_dense'] / 1e9:.2f} / {1 / r['flight_get_dense'] / 1e9:.2f} "
        "GB/s put/get).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print("\n".join(report(run(args.quick))))


if __name__ == "__main__":
    main()
