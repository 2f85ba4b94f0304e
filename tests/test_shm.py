"""Shared memory: one process writes Arrow IPC data into /dev/shm, another maps it."""

import json
import multiprocessing
import os
import stat
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


def test_segments_are_readable_by_their_owner_only(name):
    with arrowbridge.shm.create(name, {"x": np.arange(3)}) as seg:
        assert stat.S_IMODE(seg.path.stat().st_mode) == 0o600
        replacement = arrowbridge.shm.create(name, {"x": np.ones(3)}, replace=True)
        assert stat.S_IMODE(replacement.path.stat().st_mode) == 0o600


def test_segment_path_refuses_a_name_ending_in_a_newline():
    with pytest.raises(ValueError, match="segment name"):
        arrowbridge.shm.segment_path("x\n")


def test_create_refuses_a_name_ending_in_a_newline(name):
    try:
        with pytest.raises(ValueError, match="segment name"):
            arrowbridge.shm.create(f"{name}\n", {"x": np.ones(1)})
    finally:
        Path(f"/dev/shm/arrowbridge.{name}\n").unlink(missing_ok=True)


def test_a_failed_create_leaves_no_file_behind(name):
    with pytest.raises(arrowbridge.UnsupportedTypeError):
        arrowbridge.shm.create(name, {"x": np.array([None], dtype=object)})
    assert [f for f in os.listdir("/dev/shm") if name in f] == []


def test_the_previous_owner_leaves_a_replacement_alone_when_it_exits(name):
    owner = textwrap.dedent(
        f"""
        import sys, numpy as np, arrowbridge
        seg = arrowbridge.shm.create({name!r}, {{"x": np.zeros(3)}})
        print("created", flush=True)
        sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", owner], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "created"
        replacement = arrowbridge.shm.create(name, {"x": np.arange(4.0)}, replace=True)
        proc.communicate("exit\n", timeout=60)
        assert proc.returncode == 0
        assert replacement.path.exists()
        np.testing.assert_array_equal(arrowbridge.shm.attach(name).read()["x"], np.arange(4.0))
        replacement.unlink()
        assert not replacement.path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_forked_child_that_exits_leaves_its_parents_segment(name):
    script = textwrap.dedent(
        f"""
        import json, os, sys, numpy as np, arrowbridge
        seg = arrowbridge.shm.create({name!r}, {{"x": np.arange(5.0)}})
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        exists = seg.path.exists()
        total = float(arrowbridge.shm.attach({name!r}).read()["x"].sum()) if exists else None
        print(json.dumps([os.waitstatus_to_exitcode(status), exists, total]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [0, True, 10.0]
    # The parent, the segment's creator, still removes it when it exits.
    assert name not in arrowbridge.shm.list_segments()


def _create_at_once(name, index, barrier, results, done):
    # 8 MiB each: the data is ready before the start, and writing it takes long enough that
    # a check-then-write create() lets several processes through in practically every round.
    data = {"x": np.full(1 << 20, index)}
    barrier.wait()
    try:
        seg = arrowbridge.shm.create(name, data)
    except FileError as err:
        results.put((index, "FileError", str(err)))
        return
    except BaseException as err:
        results.put((index, type(err).__name__, str(err)))
        return
    results.put((index, "created", ""))
    done.wait(60)  # the winner keeps its segment until the test has read it
    seg.unlink()


@pytest.mark.parametrize("attempt", range(3))
def test_one_of_six_simultaneous_creators_wins_the_others_get_file_error(name, attempt):
    ctx = multiprocessing.get_context("fork")
    barrier, results, done = ctx.Barrier(6), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_create_at_once, args=(name, i, barrier, results, done))
        for i in range(6)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        winners = [i for i, kind, _ in outcomes if kind == "created"]
        losers = [(kind, message) for _, kind, message in outcomes if kind != "created"]
        assert len(winners) == 1, outcomes
        assert len(losers) == 5 and all(kind == "FileError" for kind, _ in losers), outcomes
        assert all(f"{name!r} exists already" in message for _, message in losers)
        x = arrowbridge.shm.attach(name).read()["x"]
        assert x.shape == (1 << 20,) and (x == winners[0]).all()
        assert [f for f in os.listdir("/dev/shm") if name in f] == [f"arrowbridge.{name}"]
    finally:
        done.set()
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
