"""The ``arrowbridge`` command: inspect, convert and compute on array files.

arrowbridge inspect FILE
arrowbridge convert IN OUT          # between .npy/.npz/.safetensors and .arrow/.arrows
arrowbridge run KERNEL IN.arrow OUT.arrow [-p NAME=VALUE ...] [--kernels PLUGIN]
arrowbridge serve [--host H] [--port P | --unix PATH] [--data-dir DIR] [--kernels PLUGIN ...]

Errors are one line on stderr, "arrowbridge COMMAND: MESSAGE", and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import secrets
import stat
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


def check_input(path: Path) -> None:
    """Names a missing input or a directory given as one (reading it would say "No such
    device" for a directory, or give a traceback)."""
    if path.is_dir():
        raise arrowbridge.FileError(f"{path}: is a directory, not a file")
    if not path.exists():
        raise arrowbridge.FileError(f"{path}: no such file")


def check_output(path: Path) -> None:
    """Names the missing directory of an output (writing would name only the file)."""
    if path.is_dir():
        raise arrowbridge.FileError(f"{path}: is a directory, not a file")
    parent = path.parent
    if not parent.is_dir():
        raise arrowbridge.FileError(f"{parent}: no such directory (the output {path} goes there)")


def unsupported_object_dtype(path: Path, name: str | None = None) -> Exception:
    where = f"{path}" if name is None else f"{path}: array {name!r}"
    return arrowbridge.UnsupportedTypeError(
        f"{where}: unsupported dtype object (an array of Python objects); arrowbridge carries "
        "numbers, booleans, datetimes and timedeltas, and never loads pickled data"
    )


def npy_holds_objects(path: Path) -> bool:
    """Whether the header of a .npy file declares Python objects (False if it is unreadable)."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            # Versions 2 and 3 share the header layout (3 only allows UTF-8 in field names).
            if major == 1:
                return np.lib.format.read_array_header_1_0(f)[2].hasobject
            return np.lib.format.read_array_header_2_0(f)[2].hasobject
    except ValueError:
        return False


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Reads any supported file as named arrays (memory-mapped where the format allows)."""
    suffix = path.suffix.lower()
    if suffix in ARROW_SUFFIXES:
        return arrowbridge.read_ipc(path)
    if suffix == ".npy":
        try:
            return {path.stem: np.load(path, mmap_mode="r")}
        except ValueError as err:
            # NumPy refuses to map object arrays (with a message that does not say "object").
            if npy_holds_objects(path):
                raise unsupported_object_dtype(path) from None
            raise ValueError(f"{path}: {err}") from None  # NumPy's messages omit the file
    if suffix == ".npz":
        arrays = {}
        with np.load(path) as z:
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as err:
                    # Object arrays would need allow_pickle=True, which stays off: unpickling
                    # runs code from the file.
                    if "allow_pickle" in str(err):
                        raise unsupported_object_dtype(path, k) from None
                    raise ValueError(f"{path}: array {k!r}: {err}") from None
        return arrays
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    raise arrowbridge.UnsupportedTypeError(
        f"{path}: unknown file type {suffix!r} (use .arrow, .npy, .npz or .safetensors)"
    )


@contextlib.contextmanager
def replacing(path: Path):
    """Yields a new temporary file next to ``path`` to write, then renames it to ``path``.

    Writing ``path`` in place would truncate an input that is still being read from it
    (``convert a.npy a.npy``) and leave half a file after a crash; the rename is atomic, and a
    mapping of the old file keeps its data alive.
    """
    tmp = path.with_name(f".{path.name[:128]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        keep_mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        keep_mode = None  # a new file: 0666 less the umask, as os.open makes it
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it, as in write_ipc
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_arrays(path: Path, arrays: dict[str, np.ndarray], progress: Progress) -> None:
    suffix = path.suffix.lower()
    if suffix in ARROW_SUFFIXES:
        # write_ipc writes through a temporary file and a rename of its own.
        arrowbridge.write_ipc(path, arrays, format="stream" if suffix == ".arrows" else "file")
        progress.advance(sum(a.nbytes for a in arrays.values()))
    elif suffix not in (".npy", ".npz", ".safetensors"):
        raise arrowbridge.UnsupportedTypeError(
            f"{path}: unknown file type {suffix!r} (use .arrow, .npy, .npz or .safetensors)"
        )
    elif suffix == ".npy" and len(arrays) != 1:
        raise arrowbridge.ShapeError(
            f"{path}: .npy holds one array, the input has {len(arrays)}: {list(arrays)}"
        )
    else:
        with replacing(path) as tmp:
            save_numpy_format(tmp, suffix, arrays, progress)


def save_numpy_format(
    path: Path, suffix: str, arrays: dict[str, np.ndarray], progress: Progress
) -> None:
    if suffix == ".npy":
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
        # A file object: given a name, np.savez appends ".npz" to it.
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        progress.advance(sum(a.nbytes for a in arrays.values()))
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
        progress.advance(sum(a.nbytes for a in arrays.values()))


def cmd_inspect(args: argparse.Namespace) -> int:
    check_input(args.file)
    reader = arrowbridge.open_ipc(args.file)
    info: dict[str, Any] = {
        "file": str(args.file),
        "format": reader.format,
        "batches": reader.num_batches,
        "rows": reader.num_rows,
        "bytes": Path(args.file).stat().st_size,
        "columns": reader.describe(),
    }
    compressed = [c["name"] for c in info["columns"] if c["error"] is None and not c["zero_copy"]]
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
        if c["error"] is not None:
            print(f"  {c['name']}: not carried by arrowbridge ({c['error']})")
            continue
        view = "view" if c["zero_copy"] else "copy"
        print(f"  {c['name']}: {c['dtype']} {tuple(c['shape'])} {c['nbytes']} bytes ({view})")
    print("schema:\n  " + reader.schema.replace("\n", "\n  "))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    check_input(args.input)
    check_output(args.output)
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
        raise ValueError(f"parameter {text!r} is not NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def load_plugins(paths: list[Path]) -> None:
    for path in paths:
        arrowbridge.load_kernels(path)


def cmd_run(args: argparse.Namespace) -> int:
    check_input(args.input)
    check_output(args.output)
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


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: the port must be 0-65535")

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        tls = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())
    if args.unix and (tls or args.host != "127.0.0.1" or args.port != 8815):
        raise ValueError("--unix replaces --host and --port, and a Unix socket takes no TLS")
    location = f"grpc+unix://{Path(args.unix).absolute()}" if args.unix else None
    server = arrowbridge.serve(
        location or f"grpc://{args.host}:{args.port}",
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
        "--unix",
        metavar="PATH",
        help="listen on this Unix socket (mode 0600) instead of --host/--port",
    )
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
    except (arrowbridge.ArrowBridgeError, OSError, ValueError) as err:
        print(f"arrowbridge {args.command}: {error_message(err)}", file=sys.stderr)
        return 2


def error_message(err: BaseException) -> str:
    """``err`` as one line: the file first, without Python's "[Errno N]" prefix."""
    if isinstance(err, OSError) and not isinstance(err, arrowbridge.ArrowBridgeError):
        if err.strerror:
            text = err.strerror if err.filename is None else f"{err.filename}: {err.strerror}"
        else:
            text = str(err)
    else:
        text = str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
