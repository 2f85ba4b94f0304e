"""The arrowbridge command: inspect, convert and run, as a user runs them."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import same_values

import arrowbridge


def cli(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "arrowbridge", *map(str, args)], capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def test_inspect_reports_schema_shapes_dtypes_sizes_and_compression(tmp_path):
    path = tmp_path / "x.arrow"
    arrowbridge.write_ipc(path, {"e": np.ones((5, 3), np.float32), "l": np.arange(5)})
    out = cli("inspect", path).stdout
    assert "Arrow IPC file, 1 batch(es), 5 row(s)" in out
    assert "e: float32 (5, 3) 60 bytes (view)" in out
    assert "compression: none" in out
    info = json.loads(cli("inspect", path, "--json").stdout)
    assert [c["name"] for c in info["columns"]] == ["e", "l"]
    arrowbridge.write_ipc(path, {"z": np.zeros((100, 100))}, compression="zstd")
    assert "compressed" in cli("inspect", path).stdout


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_convert_round_trips_through_arrow(tmp_path, suffix):
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    src = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(src, x)
    elif suffix == ".npz":
        np.savez(src, x=x)
    else:
        from safetensors.numpy import save_file

        save_file({"x": x}, str(src))
    cli("convert", src, tmp_path / "x.arrow")
    assert same_values(arrowbridge.read_ipc(tmp_path / "x.arrow")["x"], x)
    back = tmp_path / f"back{suffix}"
    cli("convert", tmp_path / "x.arrow", back)
    if suffix == ".npy":
        loaded = np.load(back)
    elif suffix == ".npz":
        loaded = np.load(back)["x"]
    else:
        from safetensors.numpy import load_file

        loaded = load_file(str(back))["x"]
    assert same_values(loaded, x)


def test_convert_shows_progress_on_large_files(tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((9, 1 << 20)))  # 72 MiB
    result = cli("convert", tmp_path / "big.npy", tmp_path / "big.arrow")
    assert "100.0% of 72 MiB" in result.stderr


def test_run_applies_a_kernel_to_the_arrays_of_a_file(tmp_path):
    x = np.arange(12.0).reshape(3, 4)
    arrowbridge.write_ipc(tmp_path / "in.arrow", {"x": x})
    cli("run", "sum", tmp_path / "in.arrow", tmp_path / "out.arrow", "-p", "axis=1")
    np.testing.assert_array_equal(
        arrowbridge.read_ipc(tmp_path / "out.arrow")["sum"], x.sum(axis=1)
    )


def test_errors_are_one_line_and_exit_1(tmp_path):
    result = cli("inspect", tmp_path / "missing.arrow", check=False)
    assert result.returncode == 1
    assert "FileError" in result.stderr and "missing.arrow" in result.stderr
    arrowbridge.write_ipc(tmp_path / "in.arrow", {"x": np.ones(3)})
    result = cli("run", "nope", tmp_path / "in.arrow", tmp_path / "o.arrow", check=False)
    assert result.returncode == 1 and "UnknownKernelError" in result.stderr
    result = cli("convert", tmp_path / "in.arrow", tmp_path / "o.txt", check=False)
    assert result.returncode == 1 and "unknown file type" in result.stderr
