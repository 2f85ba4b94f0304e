"""The Flight server under load and faults: 64 concurrent clients, clients killed mid-stream,
a full disk and a read-only data directory. Every server here is a real `arrowbridge serve`
process on loopback.

`LOAD_SECONDS` sets how long the load test runs (`make test-long` runs it for minutes).
"""

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import rss_bytes, same_values, sample, server_process

import arrowbridge
from arrowbridge.flight import RemoteStorageError

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "12"))


@pytest.mark.long
def test_64_clients_mixing_put_get_call_see_no_errors_and_flat_memory():
    clients = 64
    with server_process() as (proc, location):
        errors: list[BaseException] = []
        ops = [0] * clients
        stop = threading.Event()

        def work(i: int) -> None:
            rng = random.Random(i)
            try:
                with arrowbridge.connect(location) as c:
                    while not stop.is_set():
                        x = sample("float32", (rng.randint(1, 64), 16), seed=rng.randrange(1000))
                        name = f"c{i}-{rng.randrange(4)}"  # each client overwrites its own four
                        op = rng.random()
                        if op < 0.4:
                            c.put(name, x)
                            assert same_values(c.get(name), x)
                        elif op < 0.7:
                            assert same_values(c.call("identity", x), x)
                        else:
                            np.testing.assert_allclose(c.call("sum", x, axis=0), x.sum(axis=0))
                        ops[i] += 1
            except BaseException as e:  # every failure is reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        # Memory is compared between the end of a warm-up third and the end of the run.
        time.sleep(LOAD_SECONDS / 3)
        warm = rss_bytes(proc.pid)
        time.sleep(LOAD_SECONDS * 2 / 3)
        end = rss_bytes(proc.pid)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[:3]
        assert all(n > 0 for n in ops), "every client got work done"
        print(
            f"\n{clients} clients, {sum(ops)} operations in {LOAD_SECONDS:.0f} s, "
            f"server RSS {warm / 2**20:.0f} -> {end / 2**20:.0f} MiB"
        )
        assert end - warm < 64 * 2**20, f"server memory grew from {warm} to {end} bytes"


def test_clients_killed_mid_stream_leave_nothing_behind(tmp_path):
    # Each victim streams a 256 MiB put in 8 MiB messages and is killed part-way through.
    victim = """
import sys, numpy as np, arrowbridge
c = arrowbridge.connect(sys.argv[1])
x = np.ones((32768, 1024))
print("sending", flush=True)
c.put(sys.argv[2], x)
"""
    with server_process("--data-dir", str(tmp_path)) as (proc, location):
        with arrowbridge.connect(location) as c:
            c.put("keep", np.arange(10.0))
            baseline = peak = rss_bytes(proc.pid)
            for i in range(8):
                v = subprocess.Popen(
                    [sys.executable, "-c", victim, location, f"victim{i}"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert v.stdout.readline().strip() == "sending"
                # Killed once the server is receiving (its memory grows; on a loaded machine
                # that can take a while), a random moment later.
                before, waited = rss_bytes(proc.pid), time.monotonic() + 5
                while rss_bytes(proc.pid) - before < 16 * 2**20 and time.monotonic() < waited:
                    time.sleep(0.005)
                peak = max(peak, rss_bytes(proc.pid))
                time.sleep(random.Random(i).uniform(0.0, 0.15))
                peak = max(peak, rss_bytes(proc.pid))
                v.kill()
                v.wait()
            assert c.health()["status"] == "ok"
            # The puts were under way (the server was receiving)...
            assert peak - baseline > 64 * 2**20, "no victim got to send anything"
            # ...and once the server has finished with them (a put whose data all arrived is
            # completed and stored even if its client died waiting for the ack), a finished put
            # is whole and an unfinished one is not stored.
            # A put whose data had all arrived is listed only once its file is written and
            # fsynced (256 MiB: seconds on a loaded machine, and the list can stay the same
            # for as long meanwhile), so no moment tells that every finished put is listed:
            # each victim is checked and deleted whenever it shows up, also while the memory
            # is watched below.
            deleted = set()

            def delete_finished():
                for item in c.list():
                    name = item["name"]
                    if name.startswith("victim") and name not in deleted:
                        assert c.get(name).shape == (32768, 1024)
                        c.delete(name)
                        deleted.add(name)

            delete_finished()
            assert same_values(c.get("keep"), np.arange(10.0))
            # With the finished ones deleted, nothing of the dead puts stays in memory.
            for _ in range(40):
                time.sleep(0.5)
                delete_finished()
                kept = rss_bytes(proc.pid) - baseline
                if kept < 64 * 2**20:
                    break
            stored = sorted(item["name"] for item in c.list())
            assert kept < 64 * 2**20, f"{kept >> 20} MiB of dead puts stayed in memory ({stored})"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs: a disk that fills up. Only root can mount one, and nothing else makes a
    real ENOSPC without a special device (the file-size-limit test below covers the same
    error path without root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root (CAP_SYS_ADMIN): {result.stderr!r}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_a_clear_error_and_loses_nothing(small_tmpfs):
    one_mib = np.ones((1024, 128))
    with server_process("--data-dir", str(small_tmpfs)) as (_, location):
        with arrowbridge.connect(location) as c:
            c.put("a", one_mib)
            c.put("b", one_mib)
            with pytest.raises(
                RemoteStorageError, match=r"data directory full.*c\.arrow.*No space"
            ) as info:
                c.put("c", one_mib)
            assert isinstance(info.value, OSError)  # the error raised, not a fresh instance
            # Nothing half-written is served or left behind; what was stored is intact.
            assert sorted(i["name"] for i in c.list()) == ["a", "b"]
            assert sorted(p.name for p in small_tmpfs.iterdir()) == ["a.arrow", "b.arrow"]
            assert same_values(c.get("a"), one_mib)
            # Freeing space makes puts work again.
            c.delete("a")
            c.put("c", one_mib)
            assert c.health()["status"] == "ok"
    # And a restart serves exactly what was acknowledged.
    with server_process("--data-dir", str(small_tmpfs)) as (_, location):
        with arrowbridge.connect(location) as c:
            assert sorted(i["name"] for i in c.list()) == ["b", "c"]


@pytest.fixture
def data_dir(tmp_path):
    """A data directory that `make_read_only` can make unwritable: its own tmpfs as root (root
    ignores permission bits, not a read-only mount), a plain directory otherwise."""
    directory = tmp_path / "data"
    directory.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(directory)]
        subprocess.run(mount, check=True)
    yield directory
    if as_root:
        subprocess.run(["umount", "-l", str(directory)], check=True)
    else:
        directory.chmod(0o755)


def make_read_only(directory: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    else:
        directory.chmod(0o555)


def test_a_read_only_data_directory_is_a_clear_error(data_dir):
    with server_process("--data-dir", str(data_dir)) as (_, location):
        with arrowbridge.connect(location) as c:
            c.put("a", np.arange(5))
    make_read_only(data_dir)
    unwritable = r"(Read-only|Permission denied)"
    with server_process("--data-dir", str(data_dir)) as (_, location):
        with arrowbridge.connect(location) as c:
            assert same_values(c.get("a"), np.arange(5))  # still served
            with pytest.raises(RemoteStorageError, match=r"not writable.*b\.arrow.*" + unwritable):
                c.put("b", np.arange(3))
            with pytest.raises(RemoteStorageError, match=r"not writable.*a\.arrow.*" + unwritable):
                c.delete("a")
            # A failed delete deletes nothing.
            assert [i["name"] for i in c.list()] == ["a"]
            assert same_values(c.get("a"), np.arange(5))


def test_a_file_size_limit_is_a_clear_error():
    # RLIMIT_FSIZE makes writes past 1 MiB fail (EFBIG) without needing a special disk.
    import resource
    import tempfile

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    with tempfile.TemporaryDirectory() as data_dir:
        with server_process("--data-dir", data_dir, preexec_fn=limit) as (_, location):
            with arrowbridge.connect(location) as c:
                c.put("small", np.arange(100.0))
                with pytest.raises(
                    RemoteStorageError, match=r"refuses a file this large.*big\.arrow"
                ):
                    c.put("big", np.ones((1024, 256)))
                assert [i["name"] for i in c.list()] == ["small"]
                assert not [p for p in os.listdir(data_dir) if p.startswith(".")]
