"""arrowbridge.cluster over several Ray nodes on one machine (ray.cluster_utils.Cluster):
the servers spread over the nodes, and the same code as on one node works unchanged."""

import numpy as np
import pytest

import arrowbridge.cluster

ray = pytest.importorskip("ray", reason="arrowbridge[ray] is not installed")
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def three_nodes():
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20},
    )
    for _ in range(2):
        nodes.add_node(num_cpus=1, object_store_memory=80 << 20)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, namespace="arrowbridge", log_to_driver=False)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def test_servers_spread_over_the_nodes(three_nodes):
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 3
    with arrowbridge.cluster.start(3, replication=2) as cluster:
        assert {s.node_id for s in cluster.servers} == node_ids
        with cluster.connect() as client:
            x = np.arange(600, dtype=np.int32).reshape(200, 3)
            client.put("x", x)
            assert np.array_equal(client.get("x"), x)
            assert np.array_equal(client.call("sum", client.stored("x"), axis=0), x.sum(0))
