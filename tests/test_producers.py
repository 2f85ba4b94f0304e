"""The interop matrix of docs/in-process.md: every producer into every entry point (`to_numpy`,
`call`, an extension function's `ArrayArg`), zero-copy proven by the address of the first
value: the one the producer exported is the one Rust and NumPy see."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import arro3.core as arro3
import duckdb
import jax
import jax.numpy as jnp
import nanoarrow as na
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import rowstats
from conftest import address, arrow_values_address
from test_dlpack import DLPackOnly

import arrowbridge

VALUES = [3.0, 4.0, 5.0, 6.0]


@dataclass
class Made:
    """An input, and the address of the first value its producer exports."""

    obj: Any
    address: int


def numpy_input() -> Made:
    x = np.array(VALUES)
    return Made(x, address(x))


def pyarrow_input() -> Made:
    arr = pa.array([0.0, *VALUES]).slice(1)
    return Made(arr, arrow_values_address(arr))


def polars_input() -> Made:
    s = pl.Series("v", [0.0, *VALUES])[1:]
    return Made(s, address(s.to_numpy(allow_copy=False)))  # polars' own buffer


def duckdb_input() -> Made:
    # Each query result exports memory of its own: take one exported batch (pyarrow imports
    # it in place) and hand that memory on.
    rel = duckdb.sql("select (range + 3)::DOUBLE as v from range(4)")
    batch = pa.RecordBatchReader.from_stream(rel).read_next_batch()
    return Made(batch, arrow_values_address(batch.column(0)))


def nanoarrow_input() -> Made:
    arr = na.c_array(np.array(VALUES), na.float64())
    return Made(arr, address(np.frombuffer(arr.view().buffer(1))))


def arro3_input() -> Made:
    arr = arro3.Array.from_arrow(pa.array(VALUES))
    return Made(arr, arrow_values_address(pa.array(arr)))  # pyarrow imports it in place


def jax_input() -> Made:
    with jax.enable_x64(True):
        j = jnp.array(VALUES, dtype=jnp.float64)
    return Made(j, j.unsafe_buffer_pointer())


def dlpack_only_input() -> Made:
    x = np.array(VALUES)
    return Made(DLPackOnly(x), address(x))


PRODUCERS: dict[str, Callable[[], Made]] = {
    "numpy": numpy_input,
    "pyarrow": pyarrow_input,
    "polars": polars_input,
    "duckdb": duckdb_input,
    "nanoarrow": nanoarrow_input,
    "arro3": arro3_input,
    "jax": jax_input,
    "dlpack-only": dlpack_only_input,
}

ENTRY_POINTS: dict[str, Callable[[Any], int]] = {
    "to_numpy": lambda obj: address(arrowbridge.to_numpy(obj)),
    "call": lambda obj: address(arrowbridge.call("identity", obj)),
    "extension argument": rowstats.address,
}


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=list(ENTRY_POINTS))
@pytest.mark.parametrize("producer", PRODUCERS, ids=list(PRODUCERS))
def test_every_producer_into_every_entry_point_without_a_copy(producer, entry):
    made = PRODUCERS[producer]()
    assert ENTRY_POINTS[entry](made.obj) == made.address


@pytest.mark.parametrize("producer", PRODUCERS, ids=list(PRODUCERS))
def test_every_producer_gives_its_values(producer):
    made = PRODUCERS[producer]()
    np.testing.assert_array_equal(arrowbridge.to_numpy(made.obj), VALUES)
    np.testing.assert_array_equal(arrowbridge.call("identity", made.obj), VALUES)
    assert arrowbridge.call("sum", made.obj) == sum(VALUES)
    assert rowstats.total(made.obj) == sum(VALUES)
