"""Property tests: every dtype x rank 0-5 (zero-size axes included) x memory layout, through
every transport. What goes in comes back exactly (dtype, shape, bits), and zero-copy holds
wherever docs/in-process.md says it does (proven by addresses).

`HYPOTHESIS_PROFILE=nightly` (`make test-long`) runs ten times as many examples.
"""

import os
import shutil
import tempfile

import numpy as np
import pytest
from conftest import DTYPES, address, same_values, sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ipc import mapped_files

import arrowbridge

settings.register_profile(
    "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=10_000,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"


def examples(n: int):
    """`n` examples in make test, ten times as many in the nightly profile."""
    return settings(max_examples=n * 10 if NIGHTLY else n)


# Layouts a NumPy array can have. "C", "F", "transposed" and "offset" are one contiguous block
# of memory; "sliced" (every other element) and "negative" (reversed axis) are not.
BLOCK_LAYOUTS = ["C", "F", "transposed", "offset"]
LAYOUTS = [*BLOCK_LAYOUTS, "sliced", "negative"]


@st.composite
def arrays(draw, min_rank=0):
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(min_rank, 5))
    # One array in ten may have zero-size axes (where every address test is trivially true).
    smallest = 0 if draw(st.integers(0, 9)) == 0 else 1
    shape = tuple(draw(st.lists(st.integers(smallest, 4), min_size=rank, max_size=rank)))
    layout = draw(st.sampled_from(LAYOUTS)) if rank else "C"
    seed = draw(st.integers(0, 2**16))
    n = int(np.prod(shape))
    if layout == "C":
        x = sample(dtype, shape, seed)
    elif layout == "F":
        x = np.asfortranarray(sample(dtype, shape, seed))
    elif layout == "transposed":
        perm = draw(st.permutations(range(rank)))
        inverse = np.argsort(perm)
        x = sample(dtype, tuple(shape[i] for i in inverse), seed).transpose(perm)
    elif layout == "offset":
        # Contiguous, but starting one element into its allocation.
        x = sample(dtype, (n + 1,), seed)[1:].reshape(shape)
    elif layout == "sliced":
        base = sample(dtype, tuple(2 * d + 1 for d in shape), seed)
        x = base[tuple(slice(1, 1 + 2 * d, 2) for d in shape)]
    else:  # negative strides along one axis
        x = np.flip(sample(dtype, shape, seed), axis=draw(st.integers(0, rank - 1)))
    assert x.shape == shape
    return layout, x


def axis0_outermost_block(layout: str, x: np.ndarray) -> bool:
    """A block whose axis 0 is outermost in memory: what to_arrow views without a copy."""
    if layout not in BLOCK_LAYOUTS:
        return False
    row_bytes = x[0].size * x.itemsize if len(x) else 0
    return len(x) <= 1 or x.strides[0] == row_bytes


def viewed(result: np.ndarray, x: np.ndarray) -> bool:
    return x.size == 0 or address(result) == address(x)


@pytest.fixture(scope="module")
def tmp_dir():
    # Under /dev/shm when there is one: fsync-ed writes stay fast.
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="arrowbridge-props-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def flight_client():
    with arrowbridge.serve() as server, arrowbridge.connect(server.location) as client:
        yield client


@examples(2000)
@given(arrays())
def test_to_arrow_whole_round_trips_and_views_blocks(case):
    layout, x = case
    t = arrowbridge.to_arrow(x, whole=True)
    whole = arrowbridge.to_numpy(t)
    # The one element is the array; a 0-D array is a one-value primitive array.
    back = whole[0] if x.ndim else whole.reshape(())
    assert same_values(back, x)
    if layout in BLOCK_LAYOUTS:
        assert viewed(back, x)


@examples(2000)
@given(arrays(min_rank=1))
def test_to_arrow_rows_round_trips_and_views_where_axis_0_is_outermost(case):
    layout, x = case
    back = arrowbridge.to_numpy(arrowbridge.to_arrow(x))
    assert same_values(back, x)
    if axis0_outermost_block(layout, x):
        assert viewed(back, x)
        assert same_values(arrowbridge.to_numpy(arrowbridge.to_arrow(x, copy=False)), x)


@examples(2000)
@given(arrays())
def test_call_identity_round_trips_and_views_blocks(case):
    layout, x = case
    y = arrowbridge.call("identity", x)
    assert same_values(y, x)
    if layout in BLOCK_LAYOUTS:
        assert viewed(y, x)


@examples(1000)
@given(arrays(), st.sampled_from(["file", "stream"]))
def test_ipc_round_trips(tmp_dir, case, format):
    _, x = case
    path = os.path.join(tmp_dir, f"x.{format}")
    arrowbridge.write_ipc(path, {"x": x}, format=format)
    back = arrowbridge.read_ipc(path)["x"]
    assert same_values(back, x)
    # What read_ipc returned is a view of the file's mapping, not a copy (describe() is a
    # separate code path, so its flag alone would not prove it).
    if x.size:
        assert mapped_files(address(back)) == [path]
    (column,) = arrowbridge.open_ipc(path).describe()
    assert column["zero_copy"], column


@examples(600)
@given(arrays())
def test_flight_put_get_and_call_round_trip(flight_client, case):
    _, x = case
    flight_client.put("x", x)
    assert same_values(flight_client.get("x"), x)
    assert same_values(flight_client.call("identity", x), x)


@st.composite
def ragged_lists(draw):
    """A list of 1-6 arrays of one dtype and rank 1-4, shapes drawn apart (zero sizes
    included), each in any layout."""
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(1, 4))
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank)))
        x = sample(dtype, shape, seed=i)
        layout = draw(st.sampled_from(["C", "F", "sliced"]))
        if layout == "F":
            x = np.asfortranarray(x)
        elif layout == "sliced":
            x = np.repeat(x, 2, axis=0)[::2]
        out.append(x)
    return out


@examples(60)
@given(ragged_lists(), st.sampled_from(["memory", "file"]))
def test_ragged_lists_come_back_exactly_through_memory_and_files(xs, where):
    t = arrowbridge.to_arrow(xs)
    if where == "memory":
        back = arrowbridge.to_numpy(t)
    else:
        folder = tempfile.mkdtemp()
        try:
            path = os.path.join(folder, "r.arrow")
            arrowbridge.write_ipc(path, {"r": xs})
            back = arrowbridge.read_ipc(path)["r"]
        finally:
            shutil.rmtree(folder)
    assert len(back) == len(xs)
    for x, y in zip(xs, back, strict=True):
        assert y.dtype == x.dtype and y.shape == x.shape and same_values(x, y)
    values, shapes = arrowbridge.to_numpy(t, ragged=True)
    assert shapes.tolist() == [list(x.shape) for x in xs]
    assert values.size == sum(x.size for x in xs)
