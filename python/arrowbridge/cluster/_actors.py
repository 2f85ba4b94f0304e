"""The Ray actors of a cluster: one head (the control plane's state) and the servers."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ray

from ..errors import ItemReplacedError

#: The Ray namespace of every cluster's actors, so that other drivers find them by name.
NAMESPACE = "arrowbridge"


#: How long the head remembers a delete (the servers' ``TOMBSTONE_KEEP``).
_TOMBSTONE_KEEP = 600.0


def _order(map_json: str) -> tuple[int, str]:
    """Where a map stands among the maps of its name (its ``order``; maps without one
    first)."""
    time_ns, token = json.loads(map_json).get("order") or (0, "")
    return time_ns, token


@ray.remote
class Head:
    """What the control plane knows of one cluster: its settings, where each server listens
    (a restarted server listens there again) and the map of every sharded item (installed
    again on a server that restarts without a data directory)."""

    def __init__(self, config: dict[str, Any]):
        self._config = config
        self._servers: dict[int, dict[str, Any]] = {}
        self._maps: dict[str, tuple[bytes, str]] = {}
        #: Names deleted lately: the delete's order and when it was told.
        self._deleted: dict[str, tuple[tuple[int, str], float]] = {}

    def config(self) -> dict[str, Any]:
        return self._config

    def port_of(self, index: int) -> int:
        """The port server ``index`` listened on before (0 the first time: any free one)."""
        server = self._servers.get(index)
        return 0 if server is None else int(server["location"].rsplit(":", 1)[1])

    def register(self, index: int, record: dict[str, Any]) -> None:
        restarts = self._servers.get(index, {}).get("restarts", -1) + 1
        self._servers[index] = {**record, "index": index, "restarts": restarts}

    def servers(self) -> list[dict[str, Any]]:
        return [self._servers[i] for i in sorted(self._servers)]

    def record_map(self, name: str, schema_ipc: bytes | None, map_json: str | None) -> None:
        """A map put (``schema_ipc`` and its JSON), or a delete (``None`` and its order as
        JSON, ``{"deleted": true, "order": ...}``). Puts and deletes of one name tell the
        head in any order: the newest stays, as on the servers (a delete is remembered for
        as long as servers remember theirs)."""
        now = time.monotonic()
        self._deleted = {
            n: kept for n, kept in self._deleted.items() if now - kept[1] < _TOMBSTONE_KEEP
        }
        if map_json is None:  # a delete of no particular order
            self._maps.pop(name, None)
            return
        order = _order(map_json)
        held = self._maps.get(name)
        deleted = self._deleted.get(name)
        if (held is not None and _order(held[1]) > order) or (
            deleted is not None and deleted[0] >= order
        ):
            return  # told late: a newer put or delete was told first
        if schema_ipc is None:
            self._maps.pop(name, None)
            self._deleted[name] = (order, now)
        else:
            self._maps[name] = (schema_ipc, map_json)

    def maps(self) -> dict[str, tuple[bytes, str]]:
        return self._maps


@ray.remote
class Server:
    """An arrowbridge Flight server in a Ray worker process of its own. Ray restarts the
    process when it dies; the server then listens on the same address again, serves its
    data directory again (when the cluster has one), and gets every map from the head."""

    def __init__(self, index: int, head_name: str):
        import arrowbridge

        head = ray.get_actor(head_name, namespace=NAMESPACE)
        config = ray.get(head.config.remote())
        port = ray.get(head.port_of.remote(index))
        host = config["host"] or ray.util.get_node_ip_address()
        data_dir = config["data_dir"]
        if data_dir is not None:
            data_dir = os.path.join(data_dir, f"server-{index}")
        self._server = arrowbridge.serve(
            f"grpc://{host}:{port}", data_dir=data_dir, token=config["token"]
        )
        maps = ray.get(head.maps.remote())
        if maps:
            with arrowbridge.connect(self._server.location, token=config["token"]) as own:
                for name, (schema_ipc, map_json) in maps.items():
                    try:
                        own._native.put_map(name, schema_ipc, map_json)
                    except ItemReplacedError:
                        pass  # its data directory holds a newer put's map, which stays
        ray.get(
            head.register.remote(
                index,
                {
                    "location": self._server.location,
                    "node_id": ray.get_runtime_context().get_node_id(),
                    "pid": os.getpid(),
                },
            )
        )

    def location(self) -> str:
        return self._server.location

    def pid(self) -> int:
        return os.getpid()
