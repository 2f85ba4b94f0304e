"""The arrowbridge command: inspect, convert and run, as a user runs them."""

import errno
import io
import json
import os
import subprocess
import sys
import zipfile
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


def safetensors_bytes(header, data: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


X_F32 = {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}

# name: (the file's bytes, what the one line of stderr must say)
CORRUPT_SAFETENSORS = {
    "bad_json": (safetensors_bytes(b"{not json}", bytes(24)), "header is not valid JSON"),
    "header_length_2_62": (
        (1 << 62).to_bytes(8, "little") + json.dumps(X_F32).encode() + bytes(24),
        "header length field says 4611686018427387904 bytes",
    ),
    "truncated_data": (safetensors_bytes(X_F32, bytes(20)), "'data_offsets' [0, 24] point outside"),
    "truncated_header": (safetensors_bytes(X_F32, bytes(24))[:30], "header length field says"),
    "shorter_than_its_length_field": (b"\x10\x00\x00", "too short for the 8-byte header length"),
    "offsets_outside_the_file": (
        safetensors_bytes(
            {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 1 << 40]}}, bytes(24)
        ),
        "point outside the data section",
    ),
    "offsets_not_dtype_times_shape": (
        safetensors_bytes(
            {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}, bytes(24)
        ),
        "'data_offsets' [0, 24] span 24 bytes, but 'dtype' F32 and 'shape' [2, 2] need 16",
    ),
    "offsets_reversed": (
        safetensors_bytes({"x": {"dtype": "U8", "shape": [0], "data_offsets": [24, 0]}}, bytes(24)),
        "'data_offsets' [24, 0] end before they begin",
    ),
    "overlapping_tensors": (
        safetensors_bytes(
            {
                "x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                "y": {"dtype": "F32", "shape": [1], "data_offsets": [20, 24]},
            },
            bytes(24),
        ),
        "tensor 'y': 'data_offsets' [20, 24] overlaps",
    ),
    "unknown_dtype": (
        safetensors_bytes({"x": {"dtype": "Q99", "shape": [3], "data_offsets": [0, 3]}}, bytes(3)),
        "tensor 'x': unknown 'dtype' 'Q99'",
    ),
    "negative_shape": (
        safetensors_bytes({"x": {"dtype": "U8", "shape": [-3], "data_offsets": [0, 3]}}, bytes(3)),
        "tensor 'x': 'shape' [-3] is not a list of non-negative integers",
    ),
    "header_not_an_object": (safetensors_bytes([1, 2], b""), "header is a JSON list"),
    "missing_field": (
        safetensors_bytes({"x": {"dtype": "U8", "shape": [3]}}, bytes(3)),
        "tensor 'x': no 'data_offsets'",
    ),
}


def assert_one_line_exit_2(result, src, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"arrowbridge convert: {src}: "), lines[0]
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(CORRUPT_SAFETENSORS))
def test_a_corrupt_safetensors_file_is_named_in_one_line_and_exit_2(tmp_path, case):
    content, expected = CORRUPT_SAFETENSORS[case]
    src = tmp_path / f"{case}.safetensors"
    src.write_bytes(content)
    result = cli("convert", src, tmp_path / "out.arrow", check=False)
    assert_one_line_exit_2(result, src, expected)
    assert "invalid safetensors file" in result.stderr
    assert not (tmp_path / "out.arrow").exists()


def npy_bytes(header: str, data: bytes = bytes(96), version: bytes = b"\x01\x00") -> bytes:
    text = header.encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + data


def npy_of(x: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, x)
    return f.getvalue()


def zip_of(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", compression) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return f.getvalue()


GOOD_NPY = npy_of(np.arange(12.0).reshape(3, 4))
GOOD_NPZ = zip_of({"x.npy": GOOD_NPY, "y.npy": npy_of(np.arange(3))})
DEFLATED_NPZ = zip_of({"x.npy": npy_of(np.arange(1000.0))}, zipfile.ZIP_DEFLATED)
F8_3x4 = "{'descr': '<f8', 'fortran_order': False, 'shape': %s, }"


def flipped(content: bytes, at: int) -> bytes:
    return content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1 :]


# name: (suffix, the file's bytes, what the one line of stderr must say)
CORRUPT_NUMPY = {
    "npy_empty": (".npy", b"", "not a valid .npy file: EOF: reading magic string"),
    "npy_bad_magic": (".npy", b"hello world" * 10, "the magic string is not correct"),
    "npy_truncated_header": (".npy", GOOD_NPY[:40], "EOF: reading array header"),
    "npy_truncated_data": (".npy", GOOD_NPY[:-10], "declare 96 bytes of data, but 86 follow"),
    "npy_unparsable_header": (
        ".npy",
        npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), "),
        "not a valid .npy file",
    ),
    "npy_header_without_shape": (
        ".npy",
        npy_bytes("{'descr': '<f8', 'fortran_order': False, }"),
        "Header does not contain the correct keys",
    ),
    "npy_bad_descr": (".npy", npy_bytes(F8_3x4.replace("<f8", "zz") % "(3, 4)"), "descr"),
    "npy_negative_shape": (
        ".npy",
        npy_bytes(F8_3x4 % "(-3, 4)"),
        "'shape' (-3, 4) has a negative dimension",
    ),
    "npy_shape_2_63": (
        ".npy",
        npy_bytes(F8_3x4 % f"({2**63}, {2**63})"),
        "declare 680564733841876926926749214863536422912 bytes",
    ),
    "npy_unknown_version": (
        ".npy",
        npy_bytes(F8_3x4 % "(3, 4)", version=b"\x09\x09"),
        "unknown .npy format version 9.9",
    ),
    "npz_empty": (".npz", b"", "not a valid .npz file"),
    "npz_an_npy_file": (".npz", GOOD_NPY, "not a valid .npz file"),
    "npz_truncated": (".npz", GOOD_NPZ[:-30], "not a valid .npz file"),
    "npz_bad_crc": (
        ".npz",
        flipped(GOOD_NPZ, GOOD_NPZ.index(b"x.npy") + 5 + 200),
        "array 'x': unreadable member of the zip archive: Bad CRC-32",
    ),
    "npz_bad_deflate_stream": (
        ".npz",
        DEFLATED_NPZ[:50] + b"\xff" * 20 + DEFLATED_NPZ[70:],
        "array 'x': unreadable member of the zip archive: Error -3 while decompressing",
    ),
    "npz_member_not_npy": (
        ".npz",
        zip_of({"notes.txt": b"hello there"}),
        "array 'notes.txt': not a valid .npy file",
    ),
    "npz_member_truncated": (
        ".npz",
        zip_of({"x.npy": GOOD_NPY[:-10]}),
        "array 'x': the header's 'shape' (3, 4)",
    ),
    "npz_member_shape_2_62": (
        ".npz",
        zip_of({"x.npy": npy_bytes(F8_3x4 % f"({2**62}, 4)")}, zipfile.ZIP_DEFLATED),
        "array 'x': the header's 'shape' (4611686018427387904, 4)",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_NUMPY))
def test_a_corrupt_npy_or_npz_file_is_named_in_one_line_and_exit_2(tmp_path, case):
    suffix, content, expected = CORRUPT_NUMPY[case]
    src = tmp_path / f"{case}{suffix}"
    src.write_bytes(content)
    result = cli("convert", src, tmp_path / "out.arrow", check=False)
    assert_one_line_exit_2(result, src, expected)
    assert not (tmp_path / "out.arrow").exists()


def test_safetensors_of_every_dtype_and_a_scalar_round_trip(tmp_path):
    from safetensors.numpy import load_file, save_file

    arrays = {
        "b": np.array([True, False]),
        "i8": np.arange(-3, 4, dtype=np.int8),
        "u16": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "f16": np.arange(5, dtype=np.float16),
        "c64": np.arange(3, dtype=np.complex64) * 1j,
        "i64": np.arange(10, dtype=np.int64).reshape(2, 5),
        "empty": np.zeros((0, 4), np.float32),
    }
    src = tmp_path / "in.safetensors"
    save_file(arrays, str(src))
    cli("convert", src, tmp_path / "x.arrow")
    read = arrowbridge.read_ipc(tmp_path / "x.arrow")
    assert set(read) == set(arrays)
    for name, x in arrays.items():
        assert same_values(read[name], x), name
    # Written back, with a 0-d array (which keeps its shape).
    arrowbridge.write_ipc(tmp_path / "x.arrow", {**arrays, "scalar": np.array(2.5)})
    cli("convert", tmp_path / "x.arrow", tmp_path / "back.safetensors")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert back["scalar"].shape == () and back["scalar"] == 2.5
    for name, x in arrays.items():
        assert same_values(back[name], x), name


def test_an_array_safetensors_cannot_hold_is_refused_before_writing(tmp_path):
    arrowbridge.write_ipc(tmp_path / "t.arrow", {"t": np.arange(3).astype("datetime64[ns]")})
    out = tmp_path / "out.safetensors"
    result = cli("convert", tmp_path / "t.arrow", out, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"arrowbridge convert: {out}: array 't': .safetensors has no dtype datetime64[ns] "
        "(it holds bool, 8- to 64-bit integers, float16, float32, float64 and complex64)"
    ]
    assert sorted(os.listdir(tmp_path)) == ["t.arrow"]


def test_inspect_shows_ragged_columns_with_their_varying_axes(tmp_path):
    path = tmp_path / "ragged.arrow"
    images = [np.zeros((h, 5, 3), np.uint8) for h in (2, 4)]
    arrowbridge.write_ipc(path, {"images": images, "labels": np.arange(2)})
    out = cli("inspect", path).stdout
    assert "images: uint8 (2, None, 5, 3) 90 bytes (view)" in out
    assert "arrow.variable_shape_tensor" in out
    info = json.loads(cli("inspect", path, "--json").stdout)
    (images_info,) = [c for c in info["columns"] if c["name"] == "images"]
    assert images_info["shape"] == [2, None, 5, 3]
