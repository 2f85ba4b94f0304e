"""Fuzzing with hypothesis: the C Data Interface import and the Flight server's message
handling get random and malformed input. Each input must give a correct array or one of
arrowbridge's errors, never another exception, a crash or a server that stops serving.
(The IPC reader has its own fuzzers: `make fuzz` and the mutation fuzzer in cargo test.)

`HYPOTHESIS_PROFILE=nightly` runs ten times as many inputs.
"""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import RawArrow
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import arrowbridge

NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"


def inputs(n: int):
    return settings(
        max_examples=n * 10 if NIGHTLY else n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# Numbers that break naive code: zero, negatives, huge, just past 2^31 and 2^63.
nasty_ints = st.one_of(
    st.integers(-3, 8), st.sampled_from([-(2**63), 2**31, 2**32 + 1, 2**62, 2**63 - 1])
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), nasty_ints, st.floats(allow_nan=False), st.text()),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def to_numpy_or_refused(producer) -> np.ndarray | None:
    """The array, or None when arrowbridge refused the input with one of its own errors (any
    other exception fails the test); the outcome is recorded in hypothesis' statistics."""
    try:
        out = arrowbridge.to_numpy(producer)
    except arrowbridge.ArrowBridgeError as e:
        event(f"refused: {type(e).__name__}")
        return None
    event("accepted")
    return out


class Producer:
    """An Arrow producer handing over `array` under an arbitrary field."""

    def __init__(self, field: pa.Field, array: pa.Array):
        self.field, self.array = field, array

    def __arrow_c_array__(self, requested_schema=None):
        return self.field.__arrow_c_schema__(), self.array.__arrow_c_array__()[1]


@st.composite
def tensor_metadata(draw, size: int):
    if draw(st.booleans()):
        # Consistent metadata for `size` values per row, so that acceptance is exercised too.
        a = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
        shape = [a, size // a]
        meta = {"shape": shape}
        if draw(st.booleans()):
            meta["permutation"] = draw(st.permutations([0, 1]))
        if draw(st.booleans()):
            meta["dim_names"] = ["h", "w"]
        return json.dumps(meta)
    meta = {}
    if draw(st.booleans()):
        meta["shape"] = draw(st.lists(nasty_ints, max_size=6))
    if draw(st.booleans()):
        meta["permutation"] = draw(st.lists(nasty_ints, max_size=6))
    if draw(st.booleans()):
        meta["dim_names"] = draw(st.lists(st.text(max_size=4), max_size=6))
    if draw(st.booleans()):
        meta[draw(st.text(max_size=8))] = draw(json_values)
    text = json.dumps(meta)
    if draw(st.integers(0, 9)) == 0:  # sometimes not JSON at all
        text = text[: draw(st.integers(0, len(text)))] + draw(st.text(max_size=4))
    return text


@inputs(1500)
@given(
    data=st.data(),
    rows=st.integers(0, 4),
    size=st.integers(1, 12),
    value_type=st.sampled_from([pa.float64(), pa.int8(), pa.uint32(), pa.float16(), pa.bool_()]),
    extension=st.sampled_from(
        ["arrow.fixed_shape_tensor", "arrowbridge.complex_tensor", "arrow.bool8", "x.other", None]
    ),
)
def test_tensor_metadata_from_any_producer(data, rows, size, value_type, extension):
    metadata = data.draw(tensor_metadata(size))
    # Distinct non-zero values (alternating for bool): a view at the wrong offset, of the
    # wrong buffer or with wrong strides shows as values missing, repeated or made up.
    flat = np.arange(rows * size)
    flat = flat % 2 == 0 if value_type == pa.bool_() else (flat % 100 + 1)
    flat = flat.astype(value_type.to_pandas_dtype())
    values = pa.array(flat, value_type)
    storage = pa.FixedSizeListArray.from_arrays(values, size)
    field_metadata = {}
    if extension is not None:
        field_metadata = {
            "ARROW:extension:name": extension,
            "ARROW:extension:metadata": metadata,
        }
    out = to_numpy_or_refused(
        Producer(pa.field("t", storage.type, metadata=field_metadata), storage)
    )
    if out is None:
        return
    # Accepted: then it must be the data, with a shape that fits the storage exactly.
    assert out.shape[0] == rows
    if value_type != pa.bool_():
        assert int(np.prod(out.shape[1:])) * (2 if out.dtype.kind == "c" else 1) == size
    # Every stored value once, in whatever logical order the metadata gives.
    if out.dtype.kind == "c":
        got = np.concatenate([out.real.ravel(), out.imag.ravel()])
    elif out.dtype.kind == "b":
        got = out.ravel().view(np.uint8) != 0
        flat = flat != 0
    else:
        got = out.ravel()
    assert got.dtype == flat.dtype
    np.testing.assert_array_equal(np.sort(got), np.sort(flat))


@inputs(1500)
@given(
    data=st.data(),
    dtype=st.sampled_from(["int8", "int32", "float64", "uint16"]),
    n=st.integers(0, 64),
)
def test_c_array_struct_fields_from_a_hostile_producer(data, dtype, n):
    arr = pa.array(np.arange(n, dtype=dtype))
    # Lengths and offsets within the data, or nonsense that must be refused; buffer and child
    # counts that disagree with the type (only the type's own are read).
    length = data.draw(st.one_of(st.integers(0, n), st.sampled_from([-1, -(2**63)])))
    offset = data.draw(
        st.one_of(
            st.integers(0, n - length) if 0 <= length <= n else st.just(0),
            st.sampled_from([-1, -(2**62)]),
        )
    )
    null_count = data.draw(st.sampled_from([0, -1, 1, n]))
    n_buffers = data.draw(st.sampled_from([2, 0, 1, 3]))
    n_children = data.draw(st.sampled_from([0, 1]))
    raw = RawArrow(
        arr,
        length=length,
        offset=offset,
        null_count=null_count,
        n_buffers=n_buffers,
        n_children=n_children,
    )
    out = to_numpy_or_refused(raw)
    if out is None:
        return
    expected = np.arange(n, dtype=dtype)[offset : offset + length]
    np.testing.assert_array_equal(out, expected)


@pytest.fixture(scope="module")
def server():
    with arrowbridge.serve() as s:
        c = arrowbridge.connect(s.location)
        c.put("sentinel", np.arange(12.0).reshape(4, 3))
        yield s


# What a hostile request may get: a status that says what was wrong (INVALID_ARGUMENT,
# NOT_FOUND, OUT_OF_RANGE, UNIMPLEMENTED as pyarrow raises them), never INTERNAL, CANCELLED,
# UNKNOWN or a dropped stream, and never without a message.
UNCLEAR = (
    flight.FlightInternalError,
    flight.FlightCancelledError,
    flight.FlightUnavailableError,
    flight.FlightServerError,
)


def assert_clear_status(error: Exception) -> None:
    assert not isinstance(error, UNCLEAR), f"an unclear status: {error!r}"
    assert isinstance(error, pa.ArrowException), repr(error)
    assert str(error).strip(), "a status without a message"


def assert_still_serving(server):
    with arrowbridge.connect(server.location) as c:
        assert c.health()["status"] == "ok"
        np.testing.assert_array_equal(c.get("sentinel"), np.arange(12.0).reshape(4, 3))


exchange_commands = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "kernel": st.sampled_from(["sum", "add", "identity", "matmul", "nope", ""]),
            "args": st.lists(
                st.one_of(
                    st.fixed_dictionaries({"column": st.sampled_from(["a", "b", "zz"])}),
                    st.fixed_dictionaries({"stored": st.sampled_from(["sentinel", "missing", ""])}),
                    json_values,
                ),
                max_size=3,
            ),
        },
        optional={"params": st.dictionaries(st.sampled_from(["axis", "n", "x"]), json_values)},
    ).map(lambda v: json.dumps(v).encode()),
)


@inputs(300)
@given(
    command=exchange_commands,
    columns=st.dictionaries(
        st.sampled_from(["a", "b"]),
        st.sampled_from([np.arange(6.0).reshape(2, 3), np.ones(3, np.int32), np.zeros((0, 2))]),
        max_size=2,
    ),
)
def test_do_exchange_with_any_command(server, command, columns):
    raw = flight.FlightClient(server.location)
    try:
        writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(command))
        table = pa.table({k: arrowbridge.to_arrow(v) for k, v in columns.items()})
        writer.begin(table.schema)
        if columns:
            writer.write_table(table)
        writer.done_writing()
        reader.read_all()
        writer.close()
    except (pa.ArrowException, flight.FlightError) as error:
        assert_clear_status(error)
    finally:
        raw.close()
    assert_still_serving(server)


@inputs(300)
@given(
    kind=st.sampled_from(["get", "put", "action", "info", "schema"]),
    name=st.one_of(
        st.text(max_size=40),
        st.sampled_from(["../x", "x/../../etc", ".hidden", "a" * 300, "x\x00y", "", "x"]),
    ),
    body=st.binary(max_size=64),
)
def test_tickets_paths_and_actions_with_any_bytes(server, kind, name, body):
    raw = flight.FlightClient(server.location)
    descriptor = flight.FlightDescriptor.for_path(name)
    try:
        if kind == "get":
            raw.do_get(flight.Ticket(name.encode() + body)).read_all()
        elif kind == "put" and name != "sentinel":
            table = pa.table({"v": np.arange(3)})
            writer, _ = raw.do_put(descriptor, table.schema)
            writer.write_table(table)
            writer.close()
            assert name in {f.descriptor.path[0].decode() for f in raw.list_flights()}
            raw.do_action(flight.Action("delete", name.encode()))
        elif kind == "action":
            list(raw.do_action(flight.Action(name, body)))
        elif kind == "info":
            raw.get_flight_info(descriptor)
        else:
            raw.get_schema(descriptor)
    except UnicodeDecodeError:
        pass  # pyarrow's own: a name that is not UTF-8 never leaves the client
    except (pa.ArrowException, flight.FlightError) as error:
        assert_clear_status(error)
    finally:
        raw.close()
    assert_still_serving(server)
