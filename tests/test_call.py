"""call: Rust kernels on views of NumPy and Arrow inputs, results back without copies."""

import gc
import threading
import time
import weakref

import numpy as np
import pyarrow as pa
import pytest
from conftest import DTYPES, address, arrow_values_address, same_values, sample

import arrowbridge
from arrowbridge import (
    ByteOrderError,
    DTypeMismatchError,
    KernelError,
    KernelParameterError,
    MisalignedBufferError,
    ShapeError,
    UnknownKernelError,
    UnsupportedTypeError,
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_is_zero_copy_both_ways_for_every_dtype(dtype):
    x = sample(dtype, (5, 4))
    y = arrowbridge.call("identity", x)
    assert address(y) == address(x)
    assert same_values(y, x)


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b,
        lambda b: np.asfortranarray(b),
        lambda b: b.transpose(2, 0, 1),
        lambda b: b.transpose(0, 2, 1),
        lambda b: np.asfortranarray(b).transpose(1, 0, 2),
        lambda b: b[1:2],  # a block that starts inside its base
        lambda b: b[1:2].transpose(1, 0, 2),  # a length-1 axis in the middle
    ],
    ids=["C", "F", "T201", "T021", "F-T102", "offset", "len1"],
)
def test_identity_keeps_any_contiguous_block_and_its_strides(make):
    x = make(sample("float64", (3, 4, 5)))
    y = arrowbridge.call("identity", x)
    assert address(y) == address(x)
    # Strides of length-1 axes mean nothing (NumPy itself sets them freely).
    assert [s for s, n in zip(y.strides, y.shape, strict=True) if n > 1] == [
        s for s, n in zip(x.strides, x.shape, strict=True) if n > 1
    ]
    assert same_values(y, x)


def test_non_contiguous_inputs_are_copied_once_and_still_correct():
    base = sample("float32", (10, 6))
    x = base[::2, ::3]
    y = arrowbridge.call("identity", x)
    assert not np.shares_memory(y, base)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_allclose(
        arrowbridge.call("sum", base[::-1], axis=0), base.sum(axis=0), rtol=1e-6
    )


def test_outputs_sharing_an_input_are_read_only_fresh_outputs_writable():
    x = np.ones(4)
    same = arrowbridge.call("identity", x)
    assert not same.flags.writeable
    assert same.base is x
    out = arrowbridge.call("add", x, x)
    assert out.flags.writeable
    out += 1
    np.testing.assert_array_equal(out, [3, 3, 3, 3])


def test_outputs_keep_rust_memory_alive():
    out = arrowbridge.call("normalize", np.ones((1000, 4)))
    assert type(out.base).__name__ == "ArrowMemory"
    assert out.base.address == address(out)
    owner = weakref.ref(out.base)
    gc.collect()
    assert owner() is not None  # nothing but `out` holds the Rust memory
    np.testing.assert_array_equal(out, 0.5)
    del out
    gc.collect()
    assert owner() is None  # and it goes with the array: nothing leaks


def test_identity_of_several_arrays_returns_a_tuple():
    a, b = np.arange(3), np.ones((2, 2))
    ra, rb = arrowbridge.call("identity", a, b)
    assert address(ra) == address(a)
    assert address(rb) == address(b)


def test_many_arrays_and_keywords_by_unpacking():
    # More arrays than the call keeps on the stack, and keywords passed as a dict.
    arrays = [np.full(3, float(i)) for i in range(9)]
    out = arrowbridge.call("identity", *arrays)
    assert [address(o) for o in out] == [address(a) for a in arrays]
    params = {"axis": 0}
    assert arrowbridge.call("sum", np.ones((2, 3)), **params).tolist() == [2.0, 2.0, 2.0]


def test_call_has_a_signature():
    import inspect

    assert str(inspect.signature(arrowbridge.call)) == "(kernel, /, *arrays, **params)"


def test_arrow_inputs_are_viewed_in_place():
    arr = pa.array(np.arange(6, dtype=np.float64))
    y = arrowbridge.call("identity", arr)
    assert address(y) == arrow_values_address(arr)
    x = sample("float32", (3, 4))
    tensor = arrowbridge.to_arrow(x)
    assert address(arrowbridge.call("identity", tensor)) == address(x)
    assert arrowbridge.call("sum", tensor).item() == pytest.approx(x.sum(), rel=1e-5)
    one_chunk = pa.chunked_array([pa.array([1.0, 2.0, 3.0])])
    viewed = arrowbridge.call("identity", one_chunk)
    assert address(viewed) == arrow_values_address(one_chunk.chunk(0))
    chunked = pa.chunked_array([[1.0, 2.0], [3.0]])
    assert arrowbridge.call("sum", chunked).item() == 6.0


@pytest.mark.parametrize(
    "dtype", ["int8", "int32", "uint16", "uint64", "float32", "float64", "bool"]
)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_sum_matches_numpy(dtype, axis):
    x = sample(dtype, (7, 5))
    got = arrowbridge.call("sum", x, axis=axis)
    want = np.sum(x, axis=axis)
    assert got.shape == np.shape(want)
    if x.dtype.kind == "f":
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5)
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_sum_of_complex_and_timedelta():
    z = sample("complex128", (4, 3))
    np.testing.assert_allclose(arrowbridge.call("sum", z, axis=1), z.sum(axis=1))
    td = np.array([1, 2, 3], dtype="timedelta64[ms]")
    assert arrowbridge.call("sum", td) == np.timedelta64(6, "ms")


@pytest.mark.parametrize(
    ("sa", "sb"), [((4, 3), (4, 3)), ((4, 3), (3,)), ((4, 1), (1, 5)), ((2, 1, 3), (4, 1))]
)
def test_add_broadcasts_like_numpy(sa, sb):
    a, b = sample("float64", sa, 1), sample("float64", sb, 2)
    np.testing.assert_array_equal(arrowbridge.call("add", a, b), a + b)


def test_add_wraps_integers_like_numpy():
    a = np.array([127, -128], dtype=np.int8)
    np.testing.assert_array_equal(arrowbridge.call("add", a, np.ones(2, np.int8)), a + np.int8(1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_matches_numpy(dtype):
    a, b = sample(dtype, (6, 4), 1), sample(dtype, (4, 3), 2)
    np.testing.assert_allclose(arrowbridge.call("matmul", a, b), a @ b, rtol=1e-5)
    np.testing.assert_allclose(
        arrowbridge.call("matmul", np.asfortranarray(a), b.T.copy().T), a @ b, rtol=1e-5
    )


def test_normalize_gives_unit_rows():
    x = sample("float64", (10, 7))
    out = arrowbridge.call("normalize", x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0)
    np.testing.assert_allclose(out, x / np.linalg.norm(x, axis=1, keepdims=True))


def test_zero_size_inputs():
    assert arrowbridge.call("sum", np.zeros((0, 3))).item() == 0.0
    np.testing.assert_array_equal(arrowbridge.call("sum", np.zeros((0, 3)), axis=0), [0, 0, 0])
    assert arrowbridge.call("matmul", np.zeros((2, 0)), np.zeros((0, 3))).shape == (2, 3)
    assert arrowbridge.call("identity", np.zeros((3, 0))).shape == (3, 0)


def test_rank_zero_inputs():
    x = np.array(2.5)
    y = arrowbridge.call("identity", x)
    assert y.shape == ()
    assert y == 2.5


def test_kernels_lists_names_and_signatures():
    ks = arrowbridge.kernels()
    assert {"identity", "sum", "add", "matmul", "normalize"} <= set(ks)
    assert ks["matmul"].startswith("matmul(a: float")


class TestErrors:
    def test_unknown_kernel_lists_the_registered_ones(self):
        with pytest.raises(UnknownKernelError, match=r'unknown kernel "nope".*matmul'):
            arrowbridge.call("nope", np.ones(1))

    def test_wrong_dtype(self):
        with pytest.raises(
            DTypeMismatchError, match=r'"matmul".*dtype int64, expected float32 or float64'
        ):
            arrowbridge.call("matmul", np.ones((2, 2), np.int64), np.ones((2, 2), np.int64))
        with pytest.raises(
            DTypeMismatchError, match="argument 1 has dtype float32, expected float64"
        ):
            arrowbridge.call("add", np.ones(2), np.ones(2, np.float32))

    def test_wrong_rank_and_mismatched_shapes(self):
        with pytest.raises(ShapeError, match=r"argument 0 must be 2-D, got shape \[3\]"):
            arrowbridge.call("normalize", np.ones(3))
        with pytest.raises(ShapeError, match="not aligned"):
            arrowbridge.call("matmul", np.ones((2, 3)), np.ones((2, 3)))
        with pytest.raises(ShapeError, match="do not broadcast"):
            arrowbridge.call("add", np.ones(3), np.ones(4))

    def test_parameters(self):
        with pytest.raises(KernelParameterError, match=r'parameter "axes": unknown parameter'):
            arrowbridge.call("sum", np.ones(3), axes=0)
        with pytest.raises(KernelParameterError, match="expected an int"):
            arrowbridge.call("sum", np.ones(3), axis="0")
        with pytest.raises(KernelParameterError, match="out of bounds"):
            arrowbridge.call("sum", np.ones(3), axis=1)

    def test_array_parameters_are_lists_of_ints_or_refused_as_parameters(self):
        # A 1-D int array is a list of ints; sum takes one int, so it says so (was ValueError).
        with pytest.raises(KernelParameterError, match=r"expected an int, got Ints\(\[0, 1\]\)"):
            arrowbridge.call("sum", np.ones((2, 2)), axis=np.array([0, 1]))
        with pytest.raises(KernelParameterError, match="1-D array of dtype float64"):
            arrowbridge.call("sum", np.ones((2, 2)), axis=np.array([0.5]))
        with pytest.raises(KernelParameterError, match="a 2-D array"):
            arrowbridge.call("sum", np.ones((2, 2)), axis=np.zeros((2, 2), int))
        assert arrowbridge.call("sum", np.ones((2, 2)), axis=np.int64(0)).tolist() == [2, 2]

    def test_a_long_parameter_is_summarized_not_echoed(self):
        with pytest.raises(KernelParameterError) as raised:
            arrowbridge.call("sum", np.ones(3), axis=list(range(100_000)))
        assert "a list of 100000 ints [0, 1, 2, ..., 99999]" in str(raised.value)
        assert len(str(raised.value)) < 300

    def test_arity(self):
        with pytest.raises(KernelError, match=r"takes 2 array\(s\), 1 given"):
            arrowbridge.call("add", np.ones(3))

    def test_object_and_string_arrays(self):
        with pytest.raises(UnsupportedTypeError, match="dtype object"):
            arrowbridge.call("identity", np.array([1, "a"], dtype=object))
        with pytest.raises(UnsupportedTypeError, match="<U1"):
            arrowbridge.call("identity", np.array(["a"]))
        with pytest.raises(UnsupportedTypeError, match="object type list"):
            arrowbridge.call("identity", [1, 2])

    def test_non_native_byte_order(self):
        with pytest.raises(ByteOrderError, match=">f8"):
            arrowbridge.call("sum", np.ones(3, dtype=">f8"))

    def test_misaligned_input(self):
        raw = np.zeros(8 * 4 + 1, dtype=np.uint8)
        x = raw[1:].view(np.float64)
        assert not x.flags.aligned
        with pytest.raises(MisalignedBufferError, match="not aligned to 8 bytes"):
            arrowbridge.call("sum", x)

    def test_nulls_in_arrow_input(self):
        with pytest.raises(arrowbridge.NullValuesError, match="has 1 null value"):
            arrowbridge.call("sum", pa.array([1.0, None]))

    @pytest.mark.parametrize("name", arrowbridge.errors.__all__)
    def test_every_error_is_an_arrowbridge_error_and_a_builtin_one(self, name):
        cls = getattr(arrowbridge, name)
        assert issubclass(cls, arrowbridge.ArrowBridgeError)
        builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b is not object]
        assert name == "ArrowBridgeError" or builtin[0] is not Exception, builtin

    def test_the_kernel_name_is_required_and_a_str(self):
        with pytest.raises(TypeError, match="missing its first argument, the kernel name"):
            arrowbridge.call()
        with pytest.raises(TypeError, match="kernel name must be a str, not int"):
            arrowbridge.call(1, np.ones(3))
        with pytest.raises(TypeError, match="kernel name must be a str, not ndarray"):
            arrowbridge.call(np.ones(3))

    def test_an_unknown_kernel_is_named(self):
        with pytest.raises(UnknownKernelError, match='unknown kernel "nope"; registered kernels'):
            arrowbridge.call("nope")

    def test_a_panic_in_a_kernel_is_a_python_exception(self):
        import arrowbridge_testing  # the test hooks `make build` installs (not in the wheel)

        with pytest.raises(KernelError, match='"panics" failed: panicked: boom at row 7'):
            arrowbridge_testing.panic_in_kernel("boom at row 7")
        # The interpreter is fine afterwards.
        assert arrowbridge.call("sum", np.ones(3)) == 3.0


def test_the_gil_is_released_for_large_inputs():
    # While a kernel runs in another thread, this thread keeps running Python code: with the
    # GIL held for the whole kernel it would stop for as long as the kernel takes.
    x = np.ones((2000, 2000))
    results = []
    done = threading.Event()

    def kernel():
        results.append(arrowbridge.call("matmul", x, x)[0, 0])
        done.set()

    thread = threading.Thread(target=kernel)
    start = last = time.perf_counter()
    longest_pause = 0.0
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest_pause = max(longest_pause, now - last)
        last = now
    thread.join()
    assert results == [2000.0]
    assert longest_pause < (last - start) / 4, (longest_pause, last - start)
