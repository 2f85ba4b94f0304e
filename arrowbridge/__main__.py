"""The ``arrowbridge`` command: inspect, convert and compute on array files.

arrowbridge inspect FILE
arrowbridge convert IN OUT          # between .npy/.npz/.safetensors and .arrow/.arrows
arrowbridge run KERNEL IN.arrow OUT.arrow [-p NAME=VALUE ...] [--kernels PLUGIN]
arrowbridge serve [--host H] [--port P] [--data-dir DIR] [--kernels PLUGIN ...]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import arrowbridge

ARROW_SUFFIXES = {".arrow", ".arrows", ".feather", ".ipc"}
PROGRESS_MIN_BYTES = 64 << 20


class Progress:
    """A one-line progress bar on stderr, shown for work of 64 MiB or more."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.shown = total >= PROGRESS_MIN_BYTES

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.shown:
            frac = self.done / self.total if self.total else 1.0
            bar = "#" * int(frac * 30)
            print(
                f"\r{self.label} [{bar:<30}] {frac:6.1%} of {self.total / 2**20:.0f} MiB",
                end="",
                file=sys.stderr,
            )
            if self.done >= self.total:
                print(file=sys.stderr)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Reads any supported file as named arrays (memory-mapped where the format allows)."""
    suffix = path.suffix.lower()
    if suffix in ARROW_SUFFIXES:
        return arrowbridge.read_ipc(path)
    if suffix == ".npy":
        return {path.stem: np.load(path, mmap_mode="r")}
    if suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    raise arrowbridge.UnsupportedTypeError(
        f"{path}: unknown file type {suffix!r} (use .arrow, .npy, .npz or .safetensors)"
    )


def save_arrays(path: Path, arrays: dict[str, np.ndarray], progress: Progress) -> None:
    suffix = path.suffix.lower()
    if suffix in ARROW_SUFFIXES:
        arrowbridge.write_ipc(path, arrays, format="stream" if suffix == ".arrows" else "file")
        progress.advance(sum(a.nbytes for a in arrays.values()))
    elif suffix == ".npy":
        if len(arrays) != 1:
            raise arrowbridge.ShapeError(
                f"{path}: .npy holds one array, the input has {len(arrays)}: {list(arrays)}"
            )
        (array,) = arrays.values()
        out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
        flat_in, flat_out = array.reshape(-1), out.reshape(-1)
        step = max(1, (16 << 20) // max(1, array.itemsize))
        for start in range(0, flat_in.size, step):
            flat_out[start : start + step] = flat_in[start : start + step]
            progress.advance(flat_in[start : start + step].nbytes)
        out.flush()
        del out
    elif suffix == ".npz":
        np.savez(path, **arrays)
        progress.advance(sum(a.nbytes for a in arrays.values()))
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
        progress.advance(sum(a.nbytes for a in arrays.values()))
    else:
        raise arrowbridge.UnsupportedTypeError(
            f"{path}: unknown file type {suffix!r} (use .arrow, .npy, .npz or .safetensors)"
        )


def cmd_inspect(args: argparse.Namespace) -> int:
    reader = arrowbridge.open_ipc(args.file)
    info: dict[str, Any] = {
        "file": str(args.file),
        "format": reader.format,
        "batches": reader.num_batches,
        "rows": reader.num_rows,
        "bytes": Path(args.file).stat().st_size,
        "columns": reader.describe(),
    }
    compressed = [c["name"] for c in info["columns"] if not c["zero_copy"]]
    info["compression"] = (
        "compressed (or several batches): " + ", ".join(compressed) if compressed else "none"
    )
    if args.json:
        print(json.dumps(info, indent=2, default=list))
        return 0
    print(
        f"{info['file']}: Arrow IPC {info['format']}, {info['batches']} batch(es), "
        f"{info['rows']} row(s), {info['bytes']} bytes"
    )
    print(f"compression: {info['compression']}")
    for c in info["columns"]:
        view = "view" if c["zero_copy"] else "copy"
        print(f"  {c['name']}: {c['dtype']} {tuple(c['shape'])} {c['nbytes']} bytes ({view})")
    print("schema:\n  " + reader.schema.replace("\n", "\n  "))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    arrays = load_arrays(args.input)
    progress = Progress(
        sum(a.nbytes for a in arrays.values()), f"{args.input.name} -> {args.output.name}"
    )
    save_arrays(args.output, arrays, progress)
    print(f"{args.output}: {len(arrays)} array(s), {sum(a.nbytes for a in arrays.values())} bytes")
    return 0


def parse_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"arrowbridge run: parameter {text!r} is not NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def load_plugins(paths: list[Path]) -> None:
    for path in paths:
        arrowbridge.load_kernels(path)


def cmd_run(args: argparse.Namespace) -> int:
    load_plugins(args.kernels)
    arrays = arrowbridge.read_ipc(args.input)
    params = dict(parse_param(p) for p in args.param)
    result = arrowbridge.call(args.kernel, *arrays.values(), **params)
    outputs = result if isinstance(result, tuple) else (result,)
    names = (
        [args.kernel] if len(outputs) == 1 else [f"{args.kernel}_{i}" for i in range(len(outputs))]
    )
    arrowbridge.write_ipc(args.output, dict(zip(names, outputs, strict=True)))
    shapes = ", ".join(f"{n} {o.dtype} {o.shape}" for n, o in zip(names, outputs, strict=True))
    print(f"{args.output}: {shapes}")
    return 0


def keep_heap_small() -> None:
    """Makes glibc serve large allocations with mmap, so freed Flight messages go back to the
    OS. By default glibc raises its mmap threshold after large frees and keeps later 8 MiB
    messages in the heap: a server whose clients die mid-put grew by ~18 MiB per client."""
    if sys.platform.startswith("linux"):
        import ctypes

        M_MMAP_THRESHOLD = -3
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    keep_heap_small()

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("arrowbridge serve: --tls-cert and --tls-key go together")
        tls = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())
    server = arrowbridge.serve(
        f"grpc://{args.host}:{args.port}",
        data_dir=args.data_dir,
        token=args.token,
        tls=tls,
        kernels=args.kernels,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = f"data directory {args.data_dir}" if args.data_dir else "in memory"
    print(f"arrowbridge Flight server at {server.location} ({store})", flush=True)
    while not stop.wait(0.5):
        if not server.running:
            print("arrowbridge serve: the server stopped", file=sys.stderr)
            return 1
    server.shutdown()
    print("arrowbridge Flight server stopped", flush=True)
    return 0


def add_kernels_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kernels",
        type=Path,
        action="append",
        default=[],
        metavar="PLUGIN",
        help="load the kernels of this plugin (shared library); may be repeated",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="arrowbridge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "inspect", help="schema, shapes, dtypes, sizes and compression of an Arrow IPC file"
    )
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("convert", help="convert between .npy/.npz/.safetensors and .arrow")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("run", help="apply a registered kernel to the arrays of a file")
    p.add_argument("kernel")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("-p", "--param", action="append", default=[], help="kernel parameter NAME=VALUE")
    add_kernels_option(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "serve", help="run the Flight server in the foreground (SIGINT/SIGTERM stop it)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8815)
    p.add_argument(
        "--data-dir", type=Path, help="persist every put here and serve it after restarts"
    )
    p.add_argument("--token", help="require 'authorization: Bearer TOKEN' on every call")
    p.add_argument("--tls-cert", help="PEM certificate: serve over TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    add_kernels_option(p)
    p.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except arrowbridge.ArrowBridgeError as err:
        print(f"arrowbridge {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
