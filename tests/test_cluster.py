"""arrowbridge.cluster on a real local Ray instance: servers as actors, sharded items,
servers killed with SIGKILL and restarted by Ray, data directories, and attach() from
another driver. (Several Ray nodes on one machine: test_cluster_nodes.py.)"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import race_puts

import arrowbridge
import arrowbridge.cluster
from arrowbridge.errors import InvalidNameError

ray = pytest.importorskip("ray", reason="arrowbridge[ray] is not installed")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 << 20,
        namespace="arrowbridge",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def kill(server):
    """SIGKILL, as the OOM killer or an operator would; waits until the process is gone."""
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{server.pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{server.pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.01)


def test_servers_are_ray_actors_in_processes_of_their_own():
    with arrowbridge.cluster.start(3) as cluster:
        servers = cluster.servers
        assert [s.index for s in servers] == [0, 1, 2]
        assert len({s.pid for s in servers}) == 3 and os.getpid() not in {s.pid for s in servers}
        assert len(set(cluster.locations)) == 3
        assert all(s.node_id == ray.get_runtime_context().get_node_id() for s in servers)
        with cluster.connect() as client:
            x = np.arange(30.0).reshape(10, 3)
            client.put("x", x)
            assert client.info("x")["shards"] == 3
            assert np.array_equal(client.get("x"), x)
            assert np.array_equal(client.call("sum", client.stored("x"), axis=0), x.sum(0))
    # Shut down: the servers' processes are gone.
    time.sleep(0.5)
    assert not any(os.path.exists(f"/proc/{s.pid}/cwd") for s in servers)


def test_a_killed_server_is_restarted_and_replicas_serve_meanwhile():
    with arrowbridge.cluster.start(3, replication=2) as cluster, cluster.connect() as client:
        x = np.arange(3000, dtype=np.int64).reshape(1000, 3)
        client.put("x", x)
        before = cluster.servers
        kill(before[0])
        # During the outage: reads and calls move to the other replica.
        assert np.array_equal(client.get("x"), x)
        assert client.call("sum", client.stored("x")) == x.sum()
        cluster.wait()
        after = cluster.servers
        assert after[0].pid != before[0].pid and after[0].restarts == 1
        assert after[0].location == before[0].location, "a restarted server listens there again"
        # No acknowledged put is lost, and the restarted server describes the item again
        # (its map comes from the control plane).
        with arrowbridge.connect(after[0].location) as restarted:
            assert restarted.info("x")["rows"] == 1000
        assert np.array_equal(client.get("x"), x)
        client.put("y", x[:10])
        assert np.array_equal(client.get("y"), x[:10])


def test_an_asyncio_client_tells_the_control_plane_of_its_maps():
    import asyncio

    x = np.arange(600, dtype=np.int64).reshape(200, 3)
    with arrowbridge.cluster.start(3, replication=2) as cluster:

        async def put_then_read_through_an_outage():
            async with cluster.connect_async() as client:
                await client.put("x", x)
                before = cluster.servers
                kill(before[0])
                return before, await client.get("x"), await client.call("sum", client.stored("x"))

        before, got, total = asyncio.run(put_then_read_through_an_outage())
        assert np.array_equal(got, x) and total == x.sum()
        cluster.wait()
        # The restarted server describes the item again: its map came from the control plane,
        # told by the asyncio client's put.
        with arrowbridge.connect(cluster.servers[0].location) as restarted:
            assert restarted.info("x")["rows"] == 200
        assert cluster.servers[0].pid != before[0].pid


def test_the_control_plane_keeps_the_newest_map_of_puts_that_race():
    rows = 200
    with arrowbridge.cluster.start(2, replication=2) as cluster:
        with cluster.connect() as first, cluster.connect() as second:
            race_puts([(first, 1000), (second, 2000)], "x", puts=15, rows=rows, shards=2)
            newest = first.get("x")
        assert set(np.unique(newest)) in ({1014.0}, {2014.0})
        kill(cluster.servers[0])
        cluster.wait()
        # The restarted server got its map from the control plane, which the puts told in
        # any order: it is the newest, the one the other server holds.
        with arrowbridge.connect(cluster.servers[0].location) as restarted:
            assert np.array_equal(restarted.get("x"), newest)


def test_the_control_plane_keeps_the_newer_of_two_maps_told_out_of_order():
    import json

    from arrowbridge.cluster._actors import Head

    head = Head.remote({})
    shard = {"name": "x.shard-0-of-1.va", "rows": [0, 1], "bytes": 8, "locations": ["l"]}
    older, newer = (
        json.dumps({"rows": 1, "bytes": 8, "shards": [shard], "order": [ns, token]})
        for ns, token in ((1, "a"), (2, "b"))
    )
    ray.get(head.record_map.remote("x", b"schema", newer))
    ray.get(head.record_map.remote("x", b"schema", older))
    assert ray.get(head.maps.remote())["x"][1] == newer
    # A delete ordered after both forgets it, and a put it overtook, told late, stays out.
    deleted = json.dumps({"deleted": True, "order": [3, "c"]})
    ray.get(head.record_map.remote("x", None, deleted))
    ray.get(head.record_map.remote("x", b"schema", newer))
    assert ray.get(head.maps.remote()) == {}
    latest = json.dumps({"rows": 1, "bytes": 8, "shards": [shard], "order": [4, "d"]})
    ray.get(head.record_map.remote("x", b"schema", latest))
    assert ray.get(head.maps.remote())["x"][1] == latest
    ray.kill(head)


def test_with_a_data_dir_a_restarted_server_serves_its_shards_again(tmp_path):
    with arrowbridge.cluster.start(2, data_dir=tmp_path) as cluster, cluster.connect() as client:
        x = np.arange(100.0).reshape(50, 2)
        client.put("x", x)
        assert sorted(os.listdir(tmp_path)) == ["server-0", "server-1"]
        kill(cluster.servers[1])
        cluster.wait()
        assert cluster.servers[1].restarts == 1
        assert np.array_equal(client.get("x"), x)


def test_a_named_cluster_is_reached_from_another_driver():
    with arrowbridge.cluster.start(2, name="shared-test", token="s3cret") as cluster:
        with cluster.connect() as client:
            client.put("x", np.arange(10))
        attached = arrowbridge.cluster.attach("shared-test")
        assert attached.locations == cluster.locations
        driver = (
            "import arrowbridge.cluster as c\n"
            "with c.attach('shared-test').connect() as client:\n"
            "    print(int(client.get('x').sum()))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", driver], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "45"
        # The token is required of every client.
        with pytest.raises(arrowbridge.AuthenticationError):
            arrowbridge.connect(cluster.locations[0]).list()
    with pytest.raises(LookupError, match="no arrowbridge cluster named 'shared-test'"):
        arrowbridge.cluster.attach("shared-test")


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="replication=3"):
        arrowbridge.cluster.start(2, replication=3)
    with pytest.raises(ValueError, match="at least one server"):
        arrowbridge.cluster.start(0)


def test_ray_data_reads_and_writes_sharded_items():
    import ray.data

    from arrowbridge.cluster.data import FlightDatasource

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    with arrowbridge.cluster.start(2) as cluster, cluster.connect() as client:
        x = np.arange(300.0).reshape(100, 3)
        client.put("x", {"id": np.arange(100), "vec": x}, shards=4)
        ds = cluster.read_dataset("x")
        # One read task per endpoint; N-D columns come as Ray's tensor type.
        assert ds.count() == 100
        assert ds.materialize().num_blocks() == 4
        # Each task streams its shard: a block per batch (Ray may bundle them again).
        source = FlightDatasource(cluster.locations, "x", batch_rows=10)
        tasks = source.get_read_tasks(4)
        assert [[len(block) for block in task()] for task in tasks] == [[10, 10, 5]] * 4
        small = cluster.read_dataset("x", batch_rows=10)
        assert np.array_equal(small.take_batch(100, batch_format="numpy")["vec"], x)
        rows = ds.take_batch(100, batch_format="numpy")
        assert np.array_equal(rows["id"], np.arange(100))
        assert np.array_equal(rows["vec"], x)
        assert "ArrowTensorType" in str(ds.schema().types[1])
        # Written back as a sharded item of its own: one shard per write task.
        cluster.write_dataset(ds.map_batches(lambda b: {"vec": b["vec"] * 2}), "doubled")
        info = client.info("doubled")
        assert info["rows"] == 100 and info["shards"] >= 1
        assert np.array_equal(client.get("doubled")["vec"], 2 * x)
        # Each write stores its parts under names of its own; a rewrite removes the old ones.
        first = {s["name"] for s in client.shards("doubled")}
        assert all(re.fullmatch(r"doubled\.part-\d+\.v[0-9a-f]{16}", n) for n in first)
        cluster.write_dataset(ds.map_batches(lambda b: {"vec": b["vec"] * 3}), "doubled")
        assert np.array_equal(client.get("doubled")["vec"], 3 * x)
        assert not first & {s["name"] for s in client.shards("doubled")}
        for location in cluster.locations:
            with arrowbridge.connect(location) as plain:
                assert not {i["name"] for i in plain.list()} & first
                with pytest.raises(arrowbridge.RemoteNotFoundError):
                    plain.info(sorted(first)[0])
        with pytest.raises(InvalidNameError, match=r"'doubled\.part-0' is reserved"):
            cluster.write_dataset(ds, "doubled.part-0")


def test_ray_data_reads_and_writes_ragged_items():
    from ray.data.extensions import ArrowVariableShapedTensorType

    rng = np.random.default_rng(0)
    images = [rng.random((1 + i % 5, 2, 3)) for i in range(40)]
    with arrowbridge.cluster.start(2) as cluster, cluster.connect() as client:
        client.put("imgs", {"img": images, "label": np.arange(40)}, shards=2)
        ds = cluster.read_dataset("imgs", batch_rows=8)
        # Ray sees its own variable-shaped tensor type, and the arrays.
        assert isinstance(ds.schema().types[0], ArrowVariableShapedTensorType)
        rows = ds.take_batch(40, batch_format="numpy")
        assert [a.shape for a in rows["img"]] == [a.shape for a in images]
        assert all(np.array_equal(a, b) for a, b in zip(rows["img"], images, strict=True))
        # Written back: a list got from the item Ray wrote.
        cluster.write_dataset(ds.map_batches(lambda b: {"img": b["img"]}), "imgs-copy")
        got = client.get("imgs-copy")["img"]
        assert isinstance(got, list) and len(got) == 40
        assert all(np.array_equal(a, b) for a, b in zip(got, images, strict=True))
