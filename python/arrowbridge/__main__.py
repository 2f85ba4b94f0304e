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
import collections
import json
import math
import os
import sys
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

import arrowbridge
from arrowbridge._native import AtomicWrite

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


def unsupported_object_dtype(where: str) -> Exception:
    return arrowbridge.UnsupportedTypeError(
        f"{where}: unsupported dtype object (an array of Python objects); arrowbridge carries "
        "numbers, booleans, datetimes and timedeltas, and never loads pickled data"
    )


def one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def read_npy_header(f: Any, where: str, size: int) -> int:
    """Checks the header of a .npy file (or .npz member) of ``size`` bytes, read from ``f``
    at its start: the magic string, the header fields, and that the file holds the data the
    header's 'shape' and 'descr' declare. Returns the number of data bytes.

    Raises InvalidFileError naming ``where`` and the field, and UnsupportedTypeError for
    Python objects (which only unpickling could read).
    """
    try:
        major, minor = np.lib.format.read_magic(f)
        if (major, minor) == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif (major, minor) in ((2, 0), (3, 0)):
            # Version 3 differs only in allowing UTF-8 in field names.
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy format version {major}.{minor}")
    except (
        ValueError,
        TypeError,
        KeyError,
        SyntaxError,
        tokenize.TokenError,
        OverflowError,
        RecursionError,
    ) as err:
        # NumPy parses the header as a Python literal (tokenizing it first, for version 1 and 2
        # files written by Python 2): a corrupt one fails in any of these ways.
        detail = err.args[0] if isinstance(err, tokenize.TokenError) else one_line(err)
        raise arrowbridge.InvalidFileError(f"{where}: not a valid .npy file: {detail}") from None
    if dtype.hasobject:
        raise unsupported_object_dtype(where)
    if any(d < 0 for d in shape):
        raise arrowbridge.InvalidFileError(
            f"{where}: invalid .npy header: 'shape' {shape} has a negative dimension"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    available = size - f.tell()
    if nbytes > available:
        raise arrowbridge.InvalidFileError(
            f"{where}: the header's 'shape' {shape} and 'descr' {dtype.str!r} declare "
            f"{nbytes} bytes of data, but {available} follow the header (truncated or corrupt)"
        )
    return nbytes


def load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        read_npy_header(f, str(path), os.fstat(f.fileno()).st_size)
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as err:
        raise arrowbridge.InvalidFileError(f"{path}: {one_line(err)}") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file: a zip archive of .npy files, named as ``np.load`` names
    them. Object arrays are refused by their dtype: reading them would unpickle, which runs
    code from the file."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError) as err:
        raise arrowbridge.InvalidFileError(
            f"{path}: not a valid .npz file (a zip archive of .npy files): {one_line(err)}"
        ) from None
    arrays = {}
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            where = f"{path}: array {name!r}"
            nbytes = info.file_size
            if info.flag_bits & 0x1:
                raise arrowbridge.InvalidFileError(f"{where}: the member is encrypted")
            try:
                with archive.open(info) as member:
                    nbytes = read_npy_header(member, where, info.file_size)
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
            except (
                zipfile.BadZipFile,
                zlib.error,
                EOFError,
                NotImplementedError,
                ValueError,
            ) as err:
                if isinstance(err, arrowbridge.ArrowBridgeError):
                    raise
                raise arrowbridge.InvalidFileError(
                    f"{where}: unreadable member of the zip archive: {one_line(err)}"
                ) from None
            except MemoryError:
                raise arrowbridge.OutOfMemoryError(
                    f"{where}: its {nbytes} bytes do not fit in memory"
                ) from None
    return arrays


# The safetensors dtypes NumPy holds (all little-endian).
SAFETENSORS_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}
# Types of the format that NumPy has no dtype for.
SAFETENSORS_OTHER_DTYPES = {
    "BF16",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "F6_E2M3",
    "F6_E3M2",
    "F4",
}
# The reference implementation's limit: a larger header is refused before it is read.
SAFETENSORS_MAX_HEADER = 100_000_000


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file, memory-mapped: an 8-byte little-endian header
    length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``
    (offsets relative to the data section that follows), then the data.

    Everything the header says is checked against the file before any of it is used, and
    each problem raises InvalidFileError naming the file, the tensor and the field.
    """

    def invalid(what: str) -> Exception:
        return arrowbridge.InvalidFileError(f"{path}: invalid safetensors file: {what}")

    size = path.stat().st_size
    if size < 8:
        raise invalid(f"{size} bytes, too short for the 8-byte header length")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    size = data.size  # what is mapped, if the file changed since the stat
    header_len = int.from_bytes(bytes(data[:8]), "little")
    if header_len > size - 8:
        raise invalid(
            f"the header length field says {header_len} bytes, more than the {size - 8} "
            "bytes that follow it (truncated, or not a safetensors file)"
        )
    if header_len > SAFETENSORS_MAX_HEADER:
        raise invalid(f"the header length field says {header_len} bytes, over the 100 MB limit")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        unique = dict(pairs)
        if len(unique) != len(pairs):
            twice = next(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
            raise ValueError(f"the key {twice!r} appears twice")
        return unique

    try:
        header = json.loads(bytes(data[8 : 8 + header_len]), object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise invalid(f"the header is not valid JSON: {err.msg} at byte {err.pos}") from None
    except (ValueError, RecursionError) as err:
        raise invalid(f"the header is not valid JSON: {one_line(err)}") from None
    if not isinstance(header, dict):
        raise invalid(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise invalid("'__metadata__' is not an object")

    data_start, data_len = 8 + header_len, size - 8 - header_len
    spans = []
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise invalid(f"{where}: is not an object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in info:
                raise invalid(f"{where}: no {field!r}")
        dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise invalid(f"{where}: 'shape' {shape!r} is not a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
        ):
            raise invalid(f"{where}: 'data_offsets' {offsets!r} is not [begin, end]")
        begin, end = offsets
        if begin > end:
            raise invalid(f"{where}: 'data_offsets' {offsets} end before they begin")
        if end > data_len:
            raise invalid(
                f"{where}: 'data_offsets' {offsets} point outside the data section "
                f"({data_len} bytes; is the file truncated?)"
            )
        if isinstance(dtype_name, str) and dtype_name in SAFETENSORS_OTHER_DTYPES:
            raise arrowbridge.UnsupportedTypeError(
                f"{path}: {where}: unsupported dtype {dtype_name} (NumPy has no such type)"
            )
        if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
            raise invalid(f"{where}: unknown 'dtype' {dtype_name!r}")
        dtype = SAFETENSORS_DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise invalid(
                f"{where}: 'data_offsets' {offsets} span {end - begin} bytes, but 'dtype' "
                f"{dtype_name} and 'shape' {shape} need {nbytes}"
            )
        spans.append((begin, end, name, dtype, shape))

    # As in the reference implementation: the tensors tile the data section, and are read in
    # the order of their data.
    spans.sort(key=lambda span: span[:2])
    covered = 0
    for begin, end, name, _, _ in spans:
        if begin != covered:
            what = (
                "overlaps the one before it"
                if begin < covered
                else f"leaves a gap at byte {covered}"
            )
            raise invalid(f"tensor {name!r}: 'data_offsets' [{begin}, {end}] {what}")
        covered = end
    if covered != data_len:
        raise invalid(f"{data_len - covered} bytes after the last tensor's data")

    arrays = {}
    for begin, end, name, dtype, shape in spans:
        array = data[data_start + begin : data_start + end].view(dtype).reshape(shape)
        # Offsets need not be multiples of the itemsize: copy such a tensor to align it.
        arrays[name] = array if array.flags.aligned else array.copy()
    return arrays


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Reads any supported file as named arrays (memory-mapped where the format allows)."""
    suffix = path.suffix.lower()
    if suffix in ARROW_SUFFIXES:
        return arrowbridge.read_ipc(path)
    if suffix == ".npy":
        return {path.stem: load_npy(path)}
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".safetensors":
        return load_safetensors(path)
    raise arrowbridge.UnsupportedTypeError(
        f"{path}: unknown file type {suffix!r} (use .arrow, .npy, .npz or .safetensors)"
    )


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
        if suffix == ".safetensors":
            for name, array in arrays.items():
                safetensors_dtype(path, name, array.dtype)  # before anything is written
        # Not in place: an input still being read from it (`convert a.npy a.npy`) would be
        # truncated, and a crash would leave half a file.
        with AtomicWrite(path) as tmp:
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
        save_safetensors(path, arrays, progress)


def safetensors_dtype(path: Path, name: str, dtype: np.dtype) -> str:
    """The safetensors name of ``dtype`` (of any byte order: the file is little-endian)."""
    for code, candidate in SAFETENSORS_DTYPES.items():
        if dtype.fields is None and dtype.newbyteorder("<") == candidate:
            return code
    raise arrowbridge.UnsupportedTypeError(
        f"{path}: array {name!r}: .safetensors has no dtype {dtype} (it holds bool, 8- to "
        "64-bit integers, float16, float32, float64 and complex64)"
    )


def save_safetensors(path: Path, arrays: dict[str, np.ndarray], progress: Progress) -> None:
    """Writes ``arrays`` as a .safetensors file: the header padded with spaces to a multiple
    of 8 bytes, as the reference implementation pads it, then the tensors in C order and
    little-endian, by decreasing item size, then name (so that each is aligned in the file).
    A 0-d array keeps its shape ``[]``."""
    order = sorted(arrays, key=lambda name: (-arrays[name].dtype.itemsize, name))
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        array = arrays[name]
        header[name] = {
            "dtype": safetensors_dtype(path, name, array.dtype),
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name in order:
            array = arrays[name]
            flat = array.reshape(-1)
            step = max(1, (16 << 20) // max(1, array.itemsize))
            for start in range(0, flat.size, step):
                chunk = np.ascontiguousarray(
                    flat[start : start + step], dtype=array.dtype.newbyteorder("<")
                )
                f.write(chunk.view(np.uint8).data)
                progress.advance(chunk.nbytes)


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


def byte_count(text: str) -> int:
    """A size such as ``4096``, ``512K``, ``8M`` or ``2G`` (powers of 1024) in bytes.

    >>> byte_count("8M"), byte_count("4096")
    (8388608, 4096)
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = (text[:-1], units[text[-1].upper()]) if text[-1:].upper() in units else (text, 1)
    try:
        value = int(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M or 8G") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a budget must be more than 0 bytes")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

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
        max_bytes=args.max_bytes,
    )
    # The handler only notes the signal: it runs in this thread between two bytecodes, and
    # one that took a lock (Event.set) could find it held by this very thread (inside
    # Event.wait) and wait for it forever, as SIGTERM did about one time in ten.
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    store = f"data directory {args.data_dir}" if args.data_dir else "in memory"
    print(f"arrowbridge Flight server at {server.location} ({store})", flush=True)
    while not signals:
        if not server.running:
            print("arrowbridge serve: the server stopped", file=sys.stderr)
            return 1
        time.sleep(0.2)
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
    p.add_argument(
        "--max-bytes",
        type=byte_count,
        metavar="N",
        help="memory budget of the stored items, e.g. 8G or 512M (default: 3/4 of RAM)",
    )
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
