"""Flight puts and gets through sealed shared memory, with a real server: the data lies in
a memfd mapping (not in a copy), the server adopts only sealed memory, and clients that
cannot or must not use it get gRPC or a clear error."""

import json
import os
import socket
import struct
import sys

import numpy as np
import pytest
from conftest import same_values, sample, server_process

import arrowbridge

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="memfd and SCM_RIGHTS are Linux's"
)


def memfd_mappings(pid: int | str = "self") -> list[tuple[int, int]]:
    """The address ranges of arrowbridge's memfd mappings in process `pid`."""
    ranges = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            if "memfd:arrowbridge" in line:
                start, end = (int(a, 16) for a in line.split()[0].split("-"))
                ranges.append((start, end))
    return ranges


def in_shared_memory(array: np.ndarray) -> bool:
    address = array.ctypes.data
    return any(start <= address < end for start, end in memfd_mappings())


@pytest.fixture
def server():
    with arrowbridge.serve() as s:
        yield s


def test_a_get_maps_the_servers_memory_read_only(server):
    x = sample("float64", (2048, 64))
    with arrowbridge.connect(server.location) as c:
        c.put("x", x)
        back = c.get("x")
        assert same_values(back, x)
        assert in_shared_memory(back), "the array views a memfd mapping, not a copy"
        assert not back.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            back[0, 0] = 1.0
        again = c.get("x")
        assert in_shared_memory(again)


def test_dicts_tables_and_every_dtype_travel(server):
    arrays = {
        "f16": sample("float16", (5, 3)),
        "c64": sample("complex64", (5,)),
        "b": sample("bool", (5, 2)),
        "t": sample("datetime64[ns]", (5,)),
    }
    with arrowbridge.connect(server.location, shm=True) as c:
        c.put("d", arrays)
        back = c.get("d")
        assert list(back) == list(arrays)
        for name, x in arrays.items():
            assert same_values(back[name], x)
            assert in_shared_memory(back[name])


def test_a_put_is_adopted_by_the_server_and_served_to_grpc_clients():
    with server_process() as (proc, location):
        x = sample("float32", (4096, 256))  # 4 MiB
        with arrowbridge.connect(location, shm=True) as c:
            c.put("adopted", x)
        # The server holds the client's segment: one mapping of x's size.
        sizes = [end - start for start, end in memfd_mappings(proc.pid)]
        assert any(size >= x.nbytes for size in sizes), sizes
        with arrowbridge.connect(location, shm=False) as g:
            back = g.get("adopted")
            assert same_values(back, x) and back.flags.writeable
            assert g.call("sum", g.stored("adopted")).item() == pytest.approx(
                float(x.sum(dtype=np.float64)), rel=1e-4
            )


def shmem_huge_pages() -> bool:
    """Whether the kernel gives memfds huge pages (on request or always)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            setting = f.read()
    except OSError:
        return False
    return not any(f"[{never}]" in setting for never in ("never", "deny"))


def test_shm_none_puts_and_gets_through_shared_memory_only_where_that_is_faster():
    # A new memfd costs more than a gRPC put below 4 MiB, and at any size without huge
    # pages: there the client's choice is gRPC, and the server holds no segment of the put.
    small, large = sample("float64", (1024,)), sample("float32", (4096, 256))  # 8 KiB, 4 MiB
    with server_process() as (proc, location), arrowbridge.connect(location) as c:
        c.put("small", small)
        assert not any(end - start >= small.nbytes for start, end in memfd_mappings(proc.pid))
        c.put("large", large)
        adopted = any(end - start >= large.nbytes for start, end in memfd_mappings(proc.pid))
        assert adopted == shmem_huge_pages()
        # Gets go through shared memory from 256 KiB; a small item comes sooner by gRPC, in
        # one round trip.
        assert not in_shared_memory(c.get("small")) and in_shared_memory(c.get("large"))
        assert same_values(c.get("small"), small) and same_values(c.get("large"), large)


def test_shm_false_uses_grpc_and_shm_true_needs_a_server_that_offers_it():
    with arrowbridge.serve(shm=False) as srv:
        with arrowbridge.connect(srv.location) as c:
            c.put("x", np.arange(4.0))
            back = c.get("x")  # no shared memory offered: gRPC, silently
            assert back.flags.writeable and not in_shared_memory(back)
        with arrowbridge.connect(srv.location, shm=True) as c:
            with pytest.raises(arrowbridge.ServerUnavailableError, match="shm=True"):
                c.get("x")
    with arrowbridge.serve() as srv, arrowbridge.connect(srv.location, shm=False) as c:
        c.put("y", np.arange(4.0))
        assert c.get("y").flags.writeable


def test_a_token_is_needed_on_the_shared_memory_socket_too():
    with arrowbridge.serve(token="s3cret") as srv:
        with arrowbridge.connect(srv.location, token="s3cret", shm=True) as c:
            c.put("x", np.arange(3))
            assert in_shared_memory(c.get("x"))
        location = shm_socket(srv.location, token="s3cret")
        reply, _ = raw_request(location, {"op": "get", "name": "x"})
        assert reply["ok"] is False and "token" in reply["message"]
        assert reply["code"] == 16  # UNAUTHENTICATED


def shm_socket(location: str, token: str | None = None) -> str:
    with arrowbridge.connect(location, token=token) as c:
        info = c._native.action("shm", b"")
    return json.loads(info)["location"].removeprefix("arrowbridge+shm://")


def read_message(s: socket.socket) -> tuple[dict, list[int]]:
    """One message of the shared-memory protocol: its JSON and the descriptors with it."""
    data, got_fds, _, _ = socket.recv_fds(s, 1, 4)
    rest = b""
    while len(rest) < 3:
        rest += s.recv(3 - len(rest))
    length = struct.unpack("<I", data + rest)[0]
    payload = b""
    while len(payload) < length:
        payload += s.recv(length - len(payload))
    return json.loads(payload), got_fds


def raw_request(path: str, header: dict, fds: list[int] = ()) -> tuple[dict, list[int]]:
    """One request on the shared-memory socket, as a hostile client would send it."""
    body = json.dumps(header).encode()
    message = struct.pack("<I", len(body)) + body
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        greeting, _ = read_message(s)
        assert set(greeting) == {"instance"}, "the server greets with its instance alone"
        if fds:
            socket.send_fds(s, [message[:1]], list(fds))
            s.sendall(message[1:])
        else:
            s.sendall(message)
        reply, got_fds = read_message(s)
    for fd in got_fds:
        os.close(fd)
    return reply, got_fds


def test_unsealed_or_lying_memory_is_refused_and_nothing_is_stored(server):
    path = shm_socket(server.location)
    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"\0" * 4096)
        layout = {"schema_len": 8, "rows": 1, "columns": [[64, 8]]}
        reply, _ = raw_request(path, {"op": "put", "name": "evil", "layout": layout}, [fd])
        assert reply["ok"] is False and "not sealed" in reply["message"]
        # Sealed, but the layout points past the end of the memory.
        import fcntl

        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        layout = {"schema_len": 1 << 20, "rows": 1, "columns": [[64, 8]]}
        reply, _ = raw_request(path, {"op": "put", "name": "evil", "layout": layout}, [fd])
        assert reply["ok"] is False and "outside the shared memory" in reply["message"]
        reply, _ = raw_request(path, {"op": "put", "name": "evil", "layout": "x"}, [fd])
        assert reply["ok"] is False and "bad shared-memory request" in reply["message"]
        reply, _ = raw_request(path, {"op": "steal", "name": "evil"})
        assert reply["ok"] is False and "unknown variant `steal`" in reply["message"]
        reply, _ = raw_request(path, {"op": "get", "name": "../etc"})
        assert reply["ok"] is False and reply["code"] == 3  # INVALID_ARGUMENT
    finally:
        os.close(fd)
    with arrowbridge.connect(server.location) as c:
        assert c.list() == []
        assert c.health()["status"] == "ok"


def test_the_socket_is_private_and_removed_at_shutdown():
    import stat

    with arrowbridge.serve() as srv:
        path = shm_socket(srv.location)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        directory = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert os.stat(directory).st_uid == os.geteuid()
    assert not os.path.exists(path)


def test_a_socket_a_killed_server_left_does_not_cost_a_new_one_its_shared_memory():
    # A server killed (SIGKILL, the OOM killer) leaves its shared-memory socket behind,
    # named by its process id; once the id was reused, the next server of that id could not
    # bind the path and silently offered no shared memory (a CI run of make bench-smoke
    # failed so, on a machine where 1,366 such sockets had piled up).
    directory = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"arrowbridge-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    left = []
    for k in range(4096):  # this process's next paths, whatever servers it started before
        path = os.path.join(directory, f"shm-{os.getpid()}-{k}.sock")
        if os.path.exists(path):
            continue
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(path)  # closed without unlinking: what a killed process leaves
        left.append(path)
    try:
        with arrowbridge.serve() as server:
            with arrowbridge.connect(server.location, shm=True) as client:
                client.put("x", np.arange(10.0))
                assert client.get("x").tolist() == list(np.arange(10.0))
    finally:
        for path in left:
            if os.path.exists(path):
                os.unlink(path)
