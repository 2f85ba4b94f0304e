"""Kernel plugins: a Rust crate of one's own, built as a shared library, loaded at run time and
called from every transport (in-process, IPC files through the CLI, the Flight server)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import PLUGIN, address, start_cli_server

import arrowbridge
from arrowbridge import _native
from arrowbridge.flight import RemoteInvalidError


def zscore(x):
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, np.inf)


def test_loading_registers_the_kernels_once(plugin):
    names = arrowbridge.load_kernels(plugin)
    assert names == ["head", "pairwise_distances", "row_max", "zscore"]
    # Loaded once, however named: as a string, relative to the working directory, bare.
    assert arrowbridge.load_kernels(str(plugin)) == names
    here = os.getcwd()
    try:
        os.chdir(plugin.parent.parent)
        assert arrowbridge.load_kernels(Path("release") / plugin.name) == names
        os.chdir(plugin.parent)
        assert arrowbridge.load_kernels(plugin.name) == names
    finally:
        os.chdir(here)
    assert "pairwise_distances(a: float64[n, d]" in arrowbridge.kernels()["pairwise_distances"]


def test_plugin_kernels_compute_what_they_say(plugin):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    x[:, 3] = 7.0  # a constant column becomes 0, not NaN
    np.testing.assert_allclose(arrowbridge.call("zscore", x), zscore(x), atol=1e-12)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    expected = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    np.testing.assert_allclose(arrowbridge.call("pairwise_distances", a, b), expected)


@pytest.mark.parametrize("dtype", ["int8", "float32", "complex128", "datetime64[ns]", "bool"])
def test_memory_crosses_into_the_plugin_and_back_without_copies(plugin, dtype):
    x = np.zeros((100, 3, 2), dtype=dtype)
    head = arrowbridge.call("head", x, n=10)
    # The plugin saw x's memory and returned a view of it; the result is that same memory.
    assert address(head) == address(x)
    assert head.shape == (10, 3, 2) and head.dtype == x.dtype
    assert not head.flags.writeable


def test_plugin_errors_are_the_usual_exceptions(plugin):
    with pytest.raises(arrowbridge.DTypeMismatchError, match=r'"zscore".*argument 0.*int64'):
        arrowbridge.call("zscore", np.ones((3, 2), np.int64))
    with pytest.raises(arrowbridge.ShapeError, match="expected a 2-D array, got 3"):
        arrowbridge.call("zscore", np.ones((3, 2, 1)))
    with pytest.raises(arrowbridge.KernelParameterError, match=r'"n".*is required'):
        arrowbridge.call("head", np.ones(3))
    with pytest.raises(arrowbridge.KernelParameterError, match=r'"axis".*unknown'):
        arrowbridge.call("zscore", np.ones((3, 2)), axis=0)
    with pytest.raises(arrowbridge.ShapeError, match="rows of a have 2 values, rows of b 3"):
        arrowbridge.call("pairwise_distances", np.ones((2, 2)), np.ones((2, 3)))


def test_libraries_that_are_not_plugins_are_refused(tmp_path):
    with pytest.raises(arrowbridge.PluginError, match="cannot load the library") as err:
        arrowbridge.load_kernels(tmp_path / "missing.so")
    assert isinstance(err.value, ImportError)
    # A real shared library without the plugin entry points: the extension module itself.
    with pytest.raises(arrowbridge.PluginError, match="not an arrowbridge plugin"):
        arrowbridge.load_kernels(_native.__file__)
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"\x7fELF but not really")
    with pytest.raises(arrowbridge.PluginError, match=r"garbage\.so"):
        arrowbridge.load_kernels(garbage)


def test_the_cli_runs_plugin_kernels_on_ipc_files(tmp_path):
    x = np.random.default_rng(1).standard_normal((20, 3))
    arrowbridge.write_ipc(tmp_path / "in.arrow", {"x": x})
    command = ["run", "zscore", tmp_path / "in.arrow", tmp_path / "out.arrow", "--kernels", PLUGIN]
    result = subprocess.run(
        [sys.executable, "-m", "arrowbridge", *command],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(arrowbridge.read_ipc(tmp_path / "out.arrow")["zscore"], zscore(x))


def test_a_server_started_with_kernels_runs_them(plugin):
    x = np.arange(12.0).reshape(6, 2)
    with arrowbridge.serve(kernels=[plugin]) as server, arrowbridge.connect(server.location) as c:
        assert "zscore" in c.kernels()
        np.testing.assert_allclose(c.call("zscore", x), zscore(x))
        c.put("x", x)
        np.testing.assert_array_equal(c.call("head", c.stored("x"), n=2), x[:2])
        with pytest.raises(RemoteInvalidError, match='"zscore": argument 0 has dtype int32'):
            c.call("zscore", x.astype(np.int32))


def test_any_flight_client_can_call_plugin_kernels_on_a_cli_server(tmp_path):
    proc, location = start_cli_server("--data-dir", tmp_path, "--kernels", PLUGIN)
    try:
        raw = flight.FlightClient(location)
        a = np.array([[0.0, 0.0], [3.0, 4.0]])
        table = pa.table({"a": arrowbridge.to_arrow(a)})
        command = json.dumps(
            {"kernel": "pairwise_distances", "args": [{"column": "a"}, {"column": "a"}]}
        ).encode()
        writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(command))
        writer.begin(table.schema)
        writer.write_table(table)
        writer.done_writing()
        result = reader.read_all()
        writer.close()
        np.testing.assert_array_equal(
            arrowbridge.to_numpy(result.column(0)), [[0.0, 5.0], [5.0, 0.0]]
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
