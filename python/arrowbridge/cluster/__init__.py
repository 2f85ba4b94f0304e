"""Arrays sharded over many arrowbridge Flight servers, with Ray as the control plane.

``start(num_servers)`` runs each server as a Ray actor (its own process, restarted by Ray
when it dies), spread over the Ray nodes. ``cluster.connect()`` gives a
:class:`ClusterClient`: ``put`` splits an array's rows into shards (each on ``replication``
servers), ``get`` fetches them in parallel into one array, and ``call`` runs a kernel where
the shards live. Every server describes every sharded item with standard FlightInfo
endpoints, so any Flight client can read it.

Ray is optional (``pip install arrowbridge[ray]``): :class:`ClusterClient` works without it,
given the servers' locations. For example (tests/test_cluster.py runs this and more)::

    import numpy as np, arrowbridge.cluster

    cluster = arrowbridge.cluster.start(2)  # ray.init() first, unless Ray runs already
    with cluster.connect() as client:
        client.put("x", np.arange(8.0).reshape(4, 2))
        client.call("sum", client.stored("x"), axis=0)  # array([12., 16.])
    cluster.shutdown()
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from .aio import AsyncClusterClient
from .client import SHARDS_KEY, ClusterClient, shard_bounds


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "arrowbridge.cluster.start and attach need Ray: pip install 'arrowbridge[ray]'"
        ) from e
    return ray


@dataclass(frozen=True)
class ServerInfo:
    """One server of a cluster."""

    index: int
    #: Where Flight clients connect: ``grpc://host:port``.
    location: str
    #: The Ray node it runs on.
    node_id: str
    #: Its process (a Ray worker) id.
    pid: int
    #: How many times Ray restarted it.
    restarts: int


class Cluster:
    """A running cluster of arrowbridge Flight servers (see :func:`start`)."""

    def __init__(self, name: str, head: Any, actors: list[Any] | None = None):
        self.name = name
        # The handles that created the actors keep them alive (an actor that is not detached
        # ends with its creator's last handle); other drivers find them by name.
        self._head = head
        ray = _ray()
        self._config: dict[str, Any] = ray.get(head.config.remote())
        from ._actors import NAMESPACE

        self._actors = actors or [
            ray.get_actor(f"{name}-server-{i}", namespace=NAMESPACE)
            for i in range(self._config["num_servers"])
        ]

    @property
    def servers(self) -> list[ServerInfo]:
        """Every server: index, location, Ray node id, process id, restarts."""
        records = _ray().get(self._head.servers.remote())
        return [ServerInfo(**r) for r in records]

    @property
    def locations(self) -> list[str]:
        """Every server's location, by index."""
        return [s.location for s in self.servers]

    @property
    def replication(self) -> int:
        """How many servers hold each shard."""
        return int(self._config["replication"])

    def connect(self, *, shm: bool | None = None) -> ClusterClient:
        """A client of this cluster that also tells the control plane of every sharded item
        it puts or deletes (so that restarted servers describe them again)."""
        return ClusterClient(
            self.locations,
            token=self._config["token"],
            replication=self.replication,
            shm=shm,
            on_map=self._record_map,
        )

    def connect_async(self) -> AsyncClusterClient:
        """:meth:`connect` for asyncio: an :class:`AsyncClusterClient` that tells the control
        plane of every sharded item it puts or deletes, awaiting Ray's answer."""
        return AsyncClusterClient(
            self.locations,
            token=self._config["token"],
            replication=self.replication,
            on_map=lambda *change: self._head.record_map.remote(*change),
        )

    def _record_map(self, name: str, schema_ipc: bytes | None, map_json: str | None) -> None:
        """Tells the control plane of a map put (or deleted: ``None``)."""
        _ray().get(self._head.record_map.remote(name, schema_ipc, map_json))

    def read_dataset(self, name: str, *, batch_rows: int | None = None) -> Any:
        """The item ``name`` as a Ray Dataset: one read task per shard, each streaming its
        rows as blocks of ``batch_rows`` rows (by default about 8 MiB of them); N-D columns
        as Ray's tensor type (see :class:`arrowbridge.cluster.data.FlightDatasource`)."""
        from .data import read_dataset

        return read_dataset(
            self.locations, name, token=self._config["token"], batch_rows=batch_rows
        )

    def write_dataset(self, dataset: Any, name: str) -> None:
        """Writes a Ray Dataset into the cluster as the sharded item ``name``: one shard per
        write task (see :class:`arrowbridge.cluster.data.FlightDatasink`)."""
        from .data import write_dataset

        write_dataset(
            dataset,
            self.locations,
            name,
            token=self._config["token"],
            replication=self.replication,
            on_map=self._record_map,
        )

    def wait(self, timeout: float = 60.0) -> None:
        """Waits until every server is up (after Ray restarted one, say)."""
        ray = _ray()
        deadline = time.monotonic() + timeout
        for actor in self._actors:
            # Calls on a restarting actor wait for it (its tasks are retried).
            ray.get(actor.location.remote(), timeout=max(0.1, deadline - time.monotonic()))

    def shutdown(self) -> None:
        """Stops every server and forgets the cluster (a data directory stays on disk)."""
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        ray.kill(self._head, no_restart=True)
        pg = self._config.get("placement_group")
        if pg is not None:
            from ray.util.placement_group import get_placement_group, remove_placement_group

            try:
                remove_placement_group(get_placement_group(pg))
            except ValueError:
                pass  # removed already

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<arrowbridge.cluster.Cluster {self.name!r} of {len(self._actors)} server(s)>"


def start(
    num_servers: int = 2,
    *,
    name: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    replication: int = 1,
    token: str | None = None,
    host: str | None = None,
) -> Cluster:
    """Starts ``num_servers`` arrowbridge Flight servers as Ray actors, each in a process of
    its own, spread over the Ray nodes (a placement group with the SPREAD strategy), and
    returns the cluster. Ray is initialised (``ray.init()``: a Ray instance on this machine)
    when it is not already.

    ``name`` makes the cluster reachable from other drivers (:func:`attach`) and outlive
    this one (its actors are detached: :meth:`Cluster.shutdown` ends them). ``data_dir``
    makes every server persist its shards under ``data_dir/server-<i>`` and serve them
    again after a restart. ``replication`` servers hold each shard. ``token`` is required
    of every client. ``host`` is the address servers listen on (default: their node's IP).
    """
    ray = _ray()
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ._actors import NAMESPACE, Head, Server

    if num_servers < 1:
        raise InvalidArgumentError(
            f"num_servers={num_servers}: a cluster needs at least one server"
        )
    if not 1 <= replication <= num_servers:
        raise InvalidArgumentError(f"replication={replication}: must be between 1 and num_servers")
    if not ray.is_initialized():
        ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    cluster_name = name or f"arrowbridge-{uuid.uuid4().hex[:12]}"
    lifetime = "detached" if name else None
    # A tiny CPU share per server: a server's work happens on its own threads, and the
    # bundles exist to spread the servers over nodes, not to reserve cores.
    pg = placement_group(
        [{"CPU": 0.01}] * num_servers,
        strategy="SPREAD",
        name=f"{cluster_name}-placement",
        lifetime=lifetime,
    )
    ray.get(pg.ready(), timeout=120)
    config = {
        "num_servers": num_servers,
        "replication": replication,
        "token": token,
        "host": host,
        "data_dir": None if data_dir is None else os.path.abspath(os.fspath(data_dir)),
        "placement_group": f"{cluster_name}-placement",
    }
    head = Head.options(
        name=cluster_name, namespace=NAMESPACE, lifetime=lifetime, num_cpus=0
    ).remote(config)
    actors = [
        Server.options(
            name=f"{cluster_name}-server-{i}",
            namespace=NAMESPACE,
            lifetime=lifetime,
            num_cpus=0.01,
            max_restarts=-1,
            max_task_retries=-1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i
            ),
        ).remote(i, cluster_name)
        for i in range(num_servers)
    ]
    ray.get([a.location.remote() for a in actors], timeout=120)
    return Cluster(cluster_name, head, actors)


def attach(name: str) -> Cluster:
    """The running cluster started as ``start(..., name=name)``, from any driver of the same
    Ray cluster (Ray is initialised with ``address="auto"`` when it is not already)."""
    ray = _ray()
    from ._actors import NAMESPACE

    if not ray.is_initialized():
        ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False)
    try:
        head = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError as e:
        raise LookupError(f"no arrowbridge cluster named {name!r} is running") from e
    return Cluster(name, head)


__all__ = [
    "SHARDS_KEY",
    "AsyncClusterClient",
    "Cluster",
    "ClusterClient",
    "ServerInfo",
    "attach",
    "shard_bounds",
    "start",
]
