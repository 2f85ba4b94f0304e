"""Shared memory: one process writes Arrow IPC data into /dev/shm, another maps it."""

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from test_ipc import cargo_example, mapped_files

import arrowbridge
from arrowbridge import FileError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def name():
    n = f"test-{uuid.uuid4().hex[:12]}"
    yield n
    arrowbridge.shm.unlink(n)


def test_create_attach_read_unlink(name):
    x = np.arange(1000, dtype=np.float64).reshape(100, 10)
    seg = arrowbridge.shm.create(name, {"x": x})
    assert seg.path.exists() and str(seg.path).startswith("/dev/shm/")
    assert name in arrowbridge.shm.list_segments()
    view = arrowbridge.shm.attach(name).read()["x"]
    np.testing.assert_array_equal(view, x)
    assert mapped_files(view.__array_interface__["data"][0]) == [str(seg.path)]
    seg.unlink()
    assert not seg.path.exists()
    np.testing.assert_array_equal(view, x)  # the mapping outlives the name
    with pytest.raises(FileError, match="no shared-memory segment"):
        arrowbridge.shm.attach(name)


def test_the_owner_removes_the_segment_when_it_exits(name):
    script = textwrap.dedent(
        f"""
        import numpy as np, arrowbridge
        seg = arrowbridge.shm.create({name!r}, {{"x": np.ones(10)}})
        print(seg.path, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith(name)
    assert not Path(out.stdout.strip()).exists()


def test_another_python_process_reads_without_copying(name):
    x = np.arange(12.0)
    with arrowbridge.shm.create(name, {"x": x}) as seg:
        script = textwrap.dedent(
            f"""
            import arrowbridge
            from pathlib import Path
            x = arrowbridge.shm.attach({name!r}).read()["x"]
            addr = x.__array_interface__["data"][0]
            maps = [l.split()[-1] for l in Path("/proc/self/maps").read_text().splitlines()
                    if int(l.split("-")[0], 16) <= addr < int(l.split()[0].split("-")[1], 16)]
            print(float(x.sum()), maps[0])
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        total, mapped = out.stdout.split()
        assert float(total) == x.sum()
        assert mapped == str(seg.path)
    assert not seg.path.exists()


def test_a_rust_process_reads_the_segment_without_copying(name):
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    with arrowbridge.shm.create(name, {"x": x}) as seg:
        line = cargo_example("read", str(seg.path)).splitlines()[0]
        assert line.startswith("x float32 [4, 5] 190 ")
        addr, base, length = line.split()[-3:]
        assert int(base, 16) <= int(addr, 16) < int(base, 16) + int(length)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="segment name"):
        arrowbridge.shm.create("../etc/passwd", {"x": np.ones(1)})


def test_an_existing_segment_is_not_overwritten_unless_asked(name):
    with arrowbridge.shm.create(name, {"x": np.arange(3)}):
        with pytest.raises(FileError, match="exists already; pass replace=True"):
            arrowbridge.shm.create(name, {"x": np.zeros(3)})
        np.testing.assert_array_equal(arrowbridge.shm.attach(name).read()["x"], np.arange(3))
        replacement = arrowbridge.shm.create(name, {"x": np.ones(2)}, replace=True)
        np.testing.assert_array_equal(arrowbridge.shm.attach(name).read()["x"], np.ones(2))
        replacement.unlink()
    assert name not in arrowbridge.shm.list_segments()
