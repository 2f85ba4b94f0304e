"""Writes the seed inputs of the cargo-fuzz targets into fuzz/seeds/<target>/.

    python fuzz/make_seeds.py          # run by `make fuzz` before fuzzing

The seeds are valid inputs of every kind each target reads (IPC files and streams, plain
and compressed; real Flight messages; tensor metadata; parameters), so that libFuzzer starts
deep in the decoders. The corpora fuzzing grows from them are minimized into fuzz/corpus/
(committed, replayed by `cargo test`).
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrowbridge

ROOT = Path(__file__).resolve().parent
SEEDS = ROOT / "seeds"
FIXTURES = ROOT.parent / "crates" / "arrowbridge" / "tests" / "data"


def write(target: str, name: str, data: bytes) -> None:
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def ipc_seeds() -> None:
    tmp = SEEDS / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    arrays = {
        "e": np.arange(12, dtype=np.float32).reshape(4, 3),
        "l": np.arange(4),
        "b": np.array([True, False, True, True]),
        "z": (np.arange(4) + 1j).astype(np.complex64),
        "t": np.arange(4).astype("m8[ms]"),
    }
    different = {"a": np.arange(5.0), "s": np.array(2.5), "m": np.ones((2, 3), np.int16)}
    cases = {
        "rows.arrow": (arrays, "file", None),
        "rows.arrows": (arrays, "stream", None),
        "rows-lz4.arrow": (arrays, "file", "lz4"),
        "rows-zstd.arrows": (arrays, "stream", "zstd"),
        "elements.arrow": (different, "file", None),
        "elements-lz4.arrows": (different, "stream", "lz4"),
    }
    for name, (data, fmt, compression) in cases.items():
        path = tmp / name
        arrowbridge.write_ipc(path, data, format=fmt, compression=compression)
        write("ipc_decode", name, path.read_bytes())
    ragged = {
        "images": [np.ones((2, 3, 3), np.uint8), np.zeros((4, 1, 3), np.uint8)],
        "z": [np.ones(2, np.complex64), np.ones(1, np.complex64)],
        "b": [np.array([True]), np.array([False, True])],
    }
    path = tmp / "ragged.arrow"
    arrowbridge.write_ipc(path, ragged)
    write("ipc_decode", "ragged.arrow", path.read_bytes())
    batches = pa.Table.from_batches(
        [pa.record_batch({"x": [1.0, 2.0]}), pa.record_batch({"x": [3.0]})]
    )
    path = tmp / "batches.arrow"
    arrowbridge.write_ipc(path, batches)
    write("ipc_decode", "batches.arrow", path.read_bytes())
    for fixture in sorted(FIXTURES.iterdir()):
        write("ipc_decode", fixture.name, fixture.read_bytes())
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()


def messages(table: pa.Table) -> list[tuple[bytes, bytes]]:
    """The (flatbuffer header, body) of each IPC message of `table`, as Flight carries them."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    reader = pa.BufferReader(sink.getvalue())
    out = []
    while True:
        try:
            message = pa.ipc.read_message(reader)
        except (EOFError, StopIteration, pa.ArrowInvalid):
            break
        out.append((message.metadata.to_pybytes(), message.body.to_pybytes()))
    return out


def flight_input(put: bool, tag: bytes, table: pa.Table | None, ragged: bool = False) -> bytes:
    """An input of `flight_service`; `ragged`: a put of a ragged column whose schema the
    target supplies (the table's schema message is left out)."""
    out = bytes([2 if ragged else 0 if put else 1]) + struct.pack("<H", len(tag)) + tag
    sent = messages(table) if table is not None else []
    for header, body in sent[1:] if ragged else sent:
        out += struct.pack("<I", len(header)) + header + struct.pack("<I", len(body)) + body
    return out


def flight_seeds() -> None:
    x = arrowbridge.to_arrow(np.arange(6.0).reshape(3, 2))
    table = pa.table({"x": x, "v": np.arange(3)})
    write("flight_service", "put", flight_input(True, b"item", table))
    images = [np.ones((h, 2), np.float32) for h in (2, 1, 3)]
    ragged = pa.table({"r": arrowbridge.to_arrow(images)})
    write("flight_service", "put-ragged", flight_input(True, b"r", ragged, ragged=True))
    write(
        "flight_service",
        "put-empty",
        flight_input(True, b"e", pa.table({"x": pa.array([], pa.int64())})),
    )
    for name, command, sent in [
        ("sum-stored", {"kernel": "sum", "args": [{"stored": "x"}], "params": {"axis": 0}}, None),
        (
            "add-columns",
            {"kernel": "add", "args": [{"column": "a"}, {"column": "b"}]},
            pa.table({"a": np.arange(3.0), "b": np.ones(3)}),
        ),
        (
            "matmul",
            {"kernel": "matmul"},
            pa.table(
                {"a": arrowbridge.to_arrow(np.ones((2, 2))), "b": arrowbridge.to_arrow(np.eye(2))}
            ),
        ),
        (
            "normalize-nan",
            {"kernel": "normalize", "params": {"eps": {"float": "nan"}}},
            pa.table({"a": arrowbridge.to_arrow(np.ones((2, 3), np.float32))}),
        ),
    ]:
        write("flight_service", name, flight_input(False, json.dumps(command).encode(), sent))


def varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def do_get_response(table: pa.Table, app_metadata: bytes = b"", schema: bool = True) -> bytes:
    """The body of a DoGet response streaming `table`: a gRPC frame per FlightData message
    (data_header = field 2, app_metadata = field 3, data_body = field 1000); without its
    schema message, the rest of a DoPut request body."""
    out = b""
    for header, body in messages(table)[0 if schema else 1 :]:
        message = b"\x12" + varint(len(header)) + header
        if app_metadata:
            message += b"\x1a" + varint(len(app_metadata)) + app_metadata
        if body:
            message += varint(1000 << 3 | 2) + varint(len(body)) + body
        out += b"\x00" + struct.pack(">I", len(message)) + message
    return out


def get_response_seeds() -> None:
    """Inputs of `flight_get_response`: [columns][rows u16][piece size][response]."""
    rows = 5
    columns = {
        0: pa.table({"i": pa.array(range(rows), pa.int32()), "x": np.arange(rows) / 2}),
        1: pa.table({"x": pa.FixedSizeListArray.from_arrays(np.ones(rows * 3, np.float32), 3)}),
        2: pa.table({"x": np.arange(rows, dtype=np.float64)}),
    }
    for kind, table in columns.items():
        for piece in (0, 1, 7):
            prefix = bytes([kind]) + struct.pack("<H", rows) + bytes([piece])
            write("flight_get_response", f"t{kind}-p{piece}", prefix + do_get_response(table))
        prefix = bytes([kind]) + struct.pack("<H", rows) + bytes([3])
        write("flight_get_response", f"t{kind}-meta", prefix + do_get_response(table, b"m"))
    # [3][piece size][the batches of a put of one ragged column, float32 of rank 2].
    images = [np.full((1 + i % 3, 2 + i % 4), i, np.float32) for i in range(7)]
    ragged = pa.table({"r": arrowbridge.to_arrow(images)})
    for piece in (0, 5):
        body = do_get_response(ragged, schema=False)
        write("flight_get_response", f"put-ragged-p{piece}", bytes([3, piece]) + body)


def metadata_seeds() -> None:
    for name, prefix, meta in [
        ("plain", bytes([6, 2, 1]), {"shape": [2, 3]}),
        ("permuted", bytes([6, 1, 1]), {"shape": [2, 3], "permutation": [1, 0]}),
        ("named", bytes([8, 3, 1]), {"shape": [2, 2, 2], "dim_names": ["a", "b", "c"]}),
        ("complex", bytes([4, 2, 0]), {"shape": [2]}),
        ("empty", bytes([0, 4, 1]), {"shape": [0, 7]}),
        ("scalar", bytes([1, 1, 1]), {"shape": []}),
    ]:
        write("tensor_metadata", name, prefix + json.dumps(meta).encode())


def params_seeds() -> None:
    for name, params in [
        ("axis", {"axis": 0}),
        ("negative", {"axis": -1}),
        ("none", {"axis": None}),
        ("nan", {"eps": {"float": "nan"}, "k": [1, 2, 3]}),
        ("mixed", {"s": "text", "b": True, "f": 1.5, "big": 9223372036854775807}),
    ]:
        write("kernel_params", name, json.dumps(params).encode())


def c_data_seeds() -> None:
    # [size, type, (extension: even, kind, json length, json)], rows, then lies.
    for type_index in range(12):
        write("c_data_import", f"type-{type_index}", bytes([2, type_index, 1, 8, 0xFF, 3]))
    tensor = json.dumps({"shape": [2, 2]}).encode()
    write("c_data_import", "tensor", bytes([4, 9, 0, 1, len(tensor)]) + tensor + bytes([5, 0]))
    write("c_data_import", "lies", bytes([3, 10, 1, 9, 0x7F, 2, 1, 3, 4, 2, 1, 0x40, 1]))


def ragged_input(
    ndim: int, kind: int, lengths: list[int], shapes: list[int], meta: dict, lies: bytes = b"\0"
) -> bytes:
    """An input of `ragged_import`: [ndim, rows, value kind, complex?, lengths, shapes (i8),
    json length, json], then the lies of `c_data_import`."""
    text = json.dumps(meta).encode()
    head = [ndim, len(lengths), kind] + ([1] if kind in (0, 4) else [])
    sizes = bytes(d & 0xFF for d in shapes)
    return bytes(head) + bytes(lengths) + sizes + bytes([len(text)]) + text + lies


def ragged_seeds() -> None:
    """Inputs of `ragged_import`: variable-shape tensors, valid and not."""
    cases = {
        "f32": ragged_input(2, 0, [6, 4], [2, 3, 1, 4], {"uniform_shape": [None, None]}),
        "i8-permuted": ragged_input(2, 1, [6], [2, 3], {"permutation": [1, 0]}),
        "bool": ragged_input(1, 2, [3, 0], [3, 0], {}),
        "u16-names": ragged_input(3, 3, [2], [1, 2, 1], {"dim_names": ["a", "b", "c"]}),
        "wrong-length": ragged_input(1, 4, [3], [4], {}),
        "negative": ragged_input(2, 0, [0], [-1, 0], {}),
        "uniform-contradicted": ragged_input(1, 0, [2, 3], [2, 3], {"uniform_shape": [2]}),
        "arrow-rs": ragged_input(
            2, 0, [6], [2, 3], {"dim_names": None, "permutations": [1, 0], "uniform_shape": None}
        ),
        "lies": ragged_input(1, 0, [2, 3], [2, 3], {}, bytes([0x47, 1, 1, 1, 2])),
        "child-lies": ragged_input(1, 4, [2, 3, 1], [2, 3, 1], {}, bytes([0x41, 1, 0x07, 2, 1, 5])),
    }
    complex_case = bytes([1, 1, 0, 0, 4, 2, 2]) + b"{}" + b"\0"  # complex64: 2 elements
    cases["complex"] = complex_case
    for name, data in cases.items():
        write("ragged_import", name, data)


def ticket_seeds() -> None:
    """Inputs of `flight_ticket`: DoGet tickets as clients send them."""
    for name, ticket in [
        ("name", b"x"),
        ("rows", b'{"name": "x", "rows": [0, 2]}'),
        ("version", b'{"name": "x", "version": 1, "rows": [1, 4]}'),
        ("backwards", b'{"name": "x", "rows": [3, 1]}'),
        ("past-end", b'{"name": "x", "rows": [0, 99]}'),
        ("unknown-field", b'{"name": "x", "shard": 1}'),
        ("huge-version", b'{"name": "x", "version": 18446744073709551615}'),
    ]:
        write("flight_ticket", name, ticket)


def shm_message(header: dict) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<I", len(body)) + body


def shm_seeds() -> None:
    """Inputs of `shm_request`: requests on the shared-memory socket, without descriptors."""
    layout = {"schema_len": 8, "rows": 1, "columns": [[64, 8]]}
    for name, requests in [
        ("get", [{"op": "get", "name": "x"}]),
        ("get-twice", [{"op": "get", "name": "x"}, {"op": "get", "name": "nope"}]),
        ("put-without-memory", [{"op": "put", "name": "y", "layout": layout}]),
        ("unknown-op", [{"op": "steal", "name": "x"}]),
        ("bad-name", [{"op": "get", "name": "../etc"}]),
        ("token", [{"op": "get", "name": "x", "token": "t"}]),
    ]:
        write("shm_request", name, b"".join(shm_message(r) for r in requests))
    write("shm_request", "huge-length", struct.pack("<I", 1 << 31) + b"{}")
    write("shm_request", "cut", shm_message({"op": "get", "name": "x"})[:-3])


def main() -> int:
    ipc_seeds()
    ticket_seeds()
    shm_seeds()
    flight_seeds()
    get_response_seeds()
    metadata_seeds()
    params_seeds()
    c_data_seeds()
    ragged_seeds()
    total = sum(1 for _ in SEEDS.rglob("*") if _.is_file())
    print(f"{total} seed inputs in {SEEDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
