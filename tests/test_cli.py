"""The arrowbridge command: inspect, convert and run, as a user runs them."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import same_values

import arrowbridge
from arrowbridge.__main__ import main


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


def test_errors_are_one_line_and_exit_2(tmp_path):
    result = cli("inspect", tmp_path / "missing.arrow", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"arrowbridge inspect: {tmp_path}/missing.arrow: no such file"
    ]
    arrowbridge.write_ipc(tmp_path / "in.arrow", {"x": np.ones(3)})
    result = cli("run", "nope", tmp_path / "in.arrow", tmp_path / "o.arrow", check=False)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith('arrowbridge run: unknown kernel "nope"')
    result = cli("convert", tmp_path / "in.arrow", tmp_path / "o.txt", check=False)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "unknown file type" in result.stderr


def run_main(capsys, *args):
    """Runs the command in this process: (exit status, stdout, stderr lines)."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err.splitlines()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_convert_onto_its_own_input_keeps_the_data(tmp_path, capsys, suffix):
    x = np.arange(1000, dtype=np.float64).reshape(10, 100)
    path = tmp_path / f"a{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    else:
        np.savez(path, x=x, y=np.arange(3))
    status, _, err = run_main(capsys, "convert", path, path)
    assert (status, err) == (0, [])
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(path), x)
    else:
        with np.load(path) as z:
            np.testing.assert_array_equal(z["x"], x)
            np.testing.assert_array_equal(z["y"], np.arange(3))
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_a_failed_convert_leaves_the_previous_output_and_no_temporary_file(
    tmp_path, capsys, monkeypatch
):
    np.save(tmp_path / "in.npy", np.arange(5))
    out = tmp_path / "out.npz"
    np.savez(out, old=np.ones(2))

    def savez_until_the_disk_is_full(file, **arrays):
        if hasattr(file, "write"):
            file.write(b"PK\x03\x04 half a zip file")
        else:
            Path(file).write_bytes(b"PK\x03\x04 half a zip file")
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(np, "savez", savez_until_the_disk_is_full)
    status, _, err = run_main(capsys, "convert", tmp_path / "in.npy", out)
    monkeypatch.undo()
    assert status == 2 and len(err) == 1 and "No space left on device" in err[0]
    with np.load(out) as z:
        np.testing.assert_array_equal(z["old"], np.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "out.npz"]


def test_inspect_shows_a_file_with_a_column_it_cannot_carry(tmp_path):
    path = tmp_path / "mixed.arrow"
    arrowbridge.write_ipc(path, pa.table({"name": ["a", "b"], "v": [1.0, 2.0]}))
    out = cli("inspect", path).stdout
    assert "name: not carried by arrowbridge" in out and "Utf8" in out
    assert "v: float64 (2,) 16 bytes (view)" in out
    assert "compression: none" in out
    assert "schema:" in out and "Utf8" in out.split("schema:")[1]


def test_inspect_of_a_directory_says_it_is_a_directory(tmp_path, capsys):
    status, _, err = run_main(capsys, "inspect", tmp_path)
    assert status == 2
    assert err == [f"arrowbridge inspect: {tmp_path}: is a directory, not a file"]


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_a_missing_input_file_is_named(tmp_path, capsys, command):
    missing = tmp_path / "missing.npy"
    args = [missing] if command == "inspect" else [missing, tmp_path / "out.arrow"]
    status, _, err = run_main(capsys, command, *args)
    assert status == 2
    assert err == [f"arrowbridge {command}: {missing}: no such file"]


class RunsOnUnpickling:
    """Creates ``marker`` if it is ever unpickled: loading pickled data runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_an_object_array_is_refused_by_its_dtype_and_never_unpickled(tmp_path, capsys, suffix):
    marker = tmp_path / "unpickled"
    objects = np.array([1, "a", RunsOnUnpickling(marker)], dtype=object)
    src = tmp_path / f"obj{suffix}"
    if suffix == ".npy":
        np.save(src, objects, allow_pickle=True)
    else:
        np.savez(src, objects=objects)
    status, _, err = run_main(capsys, "convert", src, tmp_path / "out.arrow")
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"arrowbridge convert: {src}")
    assert "unsupported dtype object" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "out.arrow").exists()
    # The probe works: unpickling the file does create the marker.
    loaded = np.load(src, allow_pickle=True)
    if suffix == ".npz":
        loaded = loaded["objects"]
    assert marker.exists()


def test_a_missing_output_directory_is_named(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.arange(3))
    missing = tmp_path / "missing_dir"
    status, _, err = run_main(capsys, "convert", tmp_path / "a.npy", missing / "out.arrow")
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"arrowbridge convert: {missing}: no such directory")


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_refuses_a_port_out_of_range(capsys, port):
    status, out, err = run_main(capsys, "serve", "--port", port)
    assert (status, out) == (2, "")
    assert err == [f"arrowbridge serve: --port {port}: the port must be 0-65535"]


def test_a_parameter_without_a_value_is_one_line_and_exit_2(tmp_path, capsys):
    arrowbridge.write_ipc(tmp_path / "in.arrow", {"x": np.ones(3)})
    status, _, err = run_main(
        capsys, "run", "sum", tmp_path / "in.arrow", tmp_path / "o.arrow", "-p", "axis"
    )
    assert (status, err) == (2, ["arrowbridge run: parameter 'axis' is not NAME=VALUE"])
