"""Items sharded over several real Flight servers on loopback, with ClusterClient (no Ray):
reassembly, FlightInfo endpoints a plain pyarrow.flight client follows, kernels where the
shards live, replicas standing in for servers that are gone, and clear errors."""

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import arrowbridge
from arrowbridge.cluster import ClusterClient, shard_bounds


@pytest.fixture
def servers():
    started = [arrowbridge.serve() for _ in range(3)]
    yield started
    for server in started:
        server.shutdown()


def counts(servers):
    """Items each server holds (maps and shards)."""
    result = []
    for server in servers:
        with arrowbridge.connect(server.location) as c:
            result.append(c.health()["stored"])
    return result


@pytest.mark.parametrize("rows, shards", [(10, 3), (3, 3), (2, 5), (1000, 1), (0, 3)])
def test_shards_cover_the_rows_in_order(rows, shards):
    bounds = shard_bounds(rows, shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert len(bounds) == max(1, min(rows, shards))
    assert all(end > start for start, end in bounds) or rows == 0


def test_put_get_list_info_delete_treat_a_sharded_item_as_one(servers):
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    pair = {"id": np.arange(1000), "vec": x}
    with ClusterClient([s.location for s in servers]) as client:
        client.put("x", x)
        client.put("pair", pair, shards=2)
        got = client.get("x")
        assert got.dtype == x.dtype and np.array_equal(got, x)
        # The shards landed in one contiguous, aligned array: no concatenation after receipt.
        assert got.flags.c_contiguous
        assert got.__array_interface__["data"][0] % 64 == 0
        got_pair = client.get("pair")
        assert set(got_pair) == {"id", "vec"}
        assert np.array_equal(got_pair["id"], pair["id"])
        assert np.array_equal(got_pair["vec"], x)
        assert [s["rows"] for s in client.shards("x")] == [[0, 333], [333, 666], [666, 1000]]
        info = client.info("x")
        assert (info["rows"], info["shards"], info["endpoints"]) == (1000, 3, 3)
        assert info["columns"][0]["shape"] == [1000, 3]
        assert sorted(i["name"] for i in client.list()) == ["pair", "x"]
        # Every server holds both maps, and the shards: 3 of x and 2 of pair in all.
        assert sum(counts(servers)) == 3 * 2 + 3 + 2
        client.delete("x")
        client.delete("pair")
        assert counts(servers) == [0, 0, 0]
        with pytest.raises(arrowbridge.RemoteNotFoundError):
            client.get("x")


def test_any_server_answers_for_the_whole_item(servers):
    x = np.arange(40).reshape(20, 2)
    with ClusterClient([s.location for s in servers]) as client:
        client.put("x", x)
    for server in servers:
        with arrowbridge.connect(server.location) as plain:
            assert np.array_equal(plain.get("x"), x)


def test_a_put_over_fewer_shards_removes_the_old_ones(servers):
    with ClusterClient([s.location for s in servers]) as client:
        client.put("x", np.arange(9), shards=3)
        client.put("x", np.arange(4), shards=1)
        assert np.array_equal(client.get("x"), np.arange(4))
        # Three maps and the one shard left.
        assert sum(counts(servers)) == 3 + 1


def test_a_plain_pyarrow_flight_client_follows_the_endpoints(servers):
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    with ClusterClient([s.location for s in servers], replication=2) as client:
        client.put("x", x)
    plain = fl.connect(servers[1].location)
    info = plain.get_flight_info(fl.FlightDescriptor.for_path("x"))
    assert info.total_records == 20 and len(info.endpoints) == 3
    tables = []
    for endpoint in info.endpoints:
        assert len(endpoint.locations) == 2  # every replica
        reader = fl.connect(endpoint.locations[0]).do_get(endpoint.ticket)
        tables.append(reader.read_all())
    column = pa.concat_tables(tables).column("data").combine_chunks()
    assert np.array_equal(arrowbridge.to_numpy(column), x)
    # The map itself has no rows: a DoGet of its name says where they are.
    with pytest.raises(pa.ArrowInvalid, match="sharded over 3 shard"):
        plain.do_get(fl.Ticket(b"x")).read_all()


def test_kernels_run_where_the_shards_are_and_combine_as_declared(servers, plugin):
    rng = np.random.default_rng(0)
    x = rng.integers(-100, 100, size=(101, 4)).astype(np.int64)
    f = rng.standard_normal((101, 4))
    w = rng.standard_normal((4, 2))
    with ClusterClient([s.location for s in servers]) as client:
        client.put("x", x)
        client.put("f", f)
        kernels = client.kernels()
        assert kernels["sum"]["distribution"] == {"reduce": "sum", "axis": "axis"}
        assert kernels["matmul"]["distribution"] == "rows"
        assert kernels["zscore"]["distribution"] == "local"
        # Reductions over the rows: partial sums added (exact on integers).
        assert client.call("sum", client.stored("x")) == x.sum()
        assert np.array_equal(client.call("sum", client.stored("x"), axis=0), x.sum(axis=0))
        assert np.array_equal(client.call("sum", client.stored("x"), axis=-2), x.sum(axis=0))
        # Over another axis the rows stay apart: results concatenated in row order.
        assert np.array_equal(client.call("sum", client.stored("x"), axis=1), x.sum(axis=1))
        np.testing.assert_allclose(client.call("matmul", client.stored("f"), w), f @ w)
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        np.testing.assert_allclose(client.call("normalize", client.stored("f")), f / norms)
        dist = client.call("pairwise_distances", client.stored("f"), f[:5])
        np.testing.assert_allclose(dist, np.linalg.norm(f[:, None] - f[None, :5], axis=2))
        # A kernel that does not distribute: a clear error, or gather=True.
        with pytest.raises(arrowbridge.NotDistributableError, match=r"zscore.*gather=True"):
            client.call("zscore", client.stored("f"))
        gathered = client.call("zscore", client.stored("f"), gather=True)
        np.testing.assert_allclose(gathered, arrowbridge.call("zscore", f))
        with pytest.raises(arrowbridge.UnknownKernelError, match="nope"):
            client.call("nope", client.stored("f"))


def test_any_kernel_runs_on_a_one_shard_item_as_on_one_server(servers, plugin):
    f = np.random.default_rng(1).standard_normal((10, 3))
    with ClusterClient([s.location for s in servers]) as client:
        client.put("f", f, shards=1)
        np.testing.assert_allclose(client.call("sum", client.stored("f"), axis=0), f.sum(0))
        np.testing.assert_allclose(
            client.call("zscore", client.stored("f")), arrowbridge.call("zscore", f)
        )


def test_a_row_wise_result_with_other_rows_is_an_error(servers):
    with ClusterClient([s.location for s in servers]) as client:
        client.put("x", np.ones((3, 2)))  # one row per shard
        # Each shard (1, 2) + b (3, 2) broadcasts to 3 rows: not the shard's rows.
        with pytest.raises(arrowbridge.ShapeError, match="declared row-wise"):
            client.call("add", client.stored("x"), np.ones((3, 2)))
        # Broadcasting one row over every shard is row-wise, and right.
        assert np.array_equal(
            client.call("add", client.stored("x"), np.ones(2)), np.full((3, 2), 2.0)
        )


def test_replicas_stand_in_for_servers_that_are_gone(servers):
    x = np.arange(300.0).reshape(100, 3)
    locations = [s.location for s in servers]
    with ClusterClient(locations, replication=2) as client:
        client.put("x", x)
        servers[0].shutdown()
        assert np.array_equal(client.get("x"), x)
        assert client.call("sum", client.stored("x")) == x.sum()
        servers[1].shutdown()
        # Shard 1 lived on servers 1 and 2; shard 0 on servers 0 and 1: none of its left.
        with pytest.raises(arrowbridge.ServerUnavailableError) as err:
            client.call("sum", client.stored("x"))
        message = str(err.value)
        assert "shard 0 of 'x' (rows [0, 33))" in message
        assert locations[0] in message and locations[1] in message
        with pytest.raises(arrowbridge.ServerUnavailableError, match="endpoint 0 of"):
            client.get("x")


def test_bad_arguments_say_what_is_wrong(servers):
    locations = [s.location for s in servers]
    with pytest.raises(ValueError, match="replication=4"):
        ClusterClient(locations, replication=4)
    with pytest.raises(ValueError, match="at least one server"):
        ClusterClient([])
    with ClusterClient(locations) as client:
        with pytest.raises(arrowbridge.ShapeError, match="share axis 0"):
            client.put("d", {"a": np.arange(3), "b": np.arange(4)})
        with pytest.raises(arrowbridge.RemoteNotFoundError):
            client.info("missing")
    # A map that does not cover its rows is refused by the server.
    with arrowbridge.connect(locations[0]) as plain:
        plain.put("s", np.arange(4))
        schema_ipc = plain._native.info("s")["schema_ipc"]
        bad = {
            "rows": 4,
            "bytes": 32,
            "shards": [{"name": "s", "rows": [0, 3], "bytes": 24, "locations": [locations[0]]}],
        }
        with pytest.raises(arrowbridge.RemoteInvalidError, match="cover 3 rows of the 4"):
            plain._native.put_map("m", schema_ipc, json.dumps(bad))
