"""A client of arrays sharded over several arrowbridge Flight servers.

It needs no Ray: give it the servers' locations. :func:`arrowbridge.cluster.start` starts
such servers as Ray actors and hands out clients that also tell Ray's control plane about
every sharded item, so that a restarted server describes them again.

>>> import numpy as np, arrowbridge
>>> from arrowbridge.cluster import ClusterClient
>>> a, b = arrowbridge.serve(), arrowbridge.serve()
>>> with ClusterClient([a.location, b.location]) as client:
...     client.put("x", np.arange(10.0).reshape(5, 2))
...     client.info("x")["shards"]
...     client.get("x")[:2]
...     client.call("sum", client.stored("x"), axis=0)
2
array([[0., 1.],
       [2., 3.]])
array([20., 25.])
>>> a.shutdown(); b.shutdown()
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import (
    NotDistributableError,
    RemoteNotFoundError,
    ServerUnavailableError,
    ShapeError,
    UnknownKernelError,
)
from ..flight.client import Client, Stored, _columns

#: Schema metadata key of a sharded item's map (see ``arrowbridge_flight::shards``).
SHARDS_KEY = "arrowbridge.shards"

_COMBINE: dict[str, Callable[[Any, Any], Any]] = {
    "sum": np.add,
    "min": np.minimum,
    "max": np.maximum,
}


def shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of ``shards`` nearly equal shards (at least one; never more
    than ``rows``, so that no shard is empty unless the item is).

    >>> shard_bounds(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    >>> shard_bounds(2, 4), shard_bounds(0, 4)
    ([(0, 1), (1, 2)], [(0, 0)])
    """
    n = max(1, min(shards, rows))
    cuts = [i * rows // n for i in range(n + 1)]
    return list(itertools.pairwise(cuts))


def _shard_map(info: dict[str, Any]) -> dict[str, Any] | None:
    """The map in an item's schema metadata; ``None`` for an item that is not sharded."""
    text = (info["schema"].metadata or {}).get(SHARDS_KEY.encode())
    return None if text is None else json.loads(text)


class ClusterClient:
    """Reads and writes items sharded by rows over the Flight servers at ``locations``.

    Each item's rows are split into contiguous shards, each stored on ``replication``
    servers; every server stores the item's *map*, so any of them answers GetFlightInfo with
    one endpoint per shard listing every replica, and plain Flight clients can follow it.
    Reads and calls move to the next replica when a server does not answer.

    ``token`` is sent to every server; ``shm`` is as in :func:`arrowbridge.connect`.
    """

    def __init__(
        self,
        locations: Sequence[str],
        *,
        token: str | None = None,
        replication: int = 1,
        shm: bool | None = None,
        on_map: Callable[[str, bytes | None, str | None], None] | None = None,
    ):
        if not locations:
            raise ValueError("a cluster client needs at least one server location")
        if not 1 <= replication <= len(locations):
            raise ValueError(
                f"replication={replication}: must be between 1 and the {len(locations)} server(s)"
            )
        self.locations = list(locations)
        self.replication = replication
        self._token, self._shm = token, shm
        self._clients = {loc: Client(loc, token=token, shm=shm) for loc in self.locations}
        self._pool = ThreadPoolExecutor(max_workers=min(32, 4 * len(self.locations)))
        # Told of every map put (name, schema, map) and deleted (name, None, None): the
        # control plane that reinstalls maps on restarted servers.
        self._on_map = on_map
        self._kernels: dict[str, dict[str, Any]] | None = None

    # -- helpers -------------------------------------------------------------------------

    def _client(self, location: str) -> Client:
        """The client of ``location``: one of the cluster's, or one made for a replica a map
        names elsewhere."""
        if location not in self._clients:
            self._clients[location] = Client(location, token=self._token, shm=self._shm)
        return self._clients[location]

    def _any(self, what: str, op: Callable[[Client], Any]) -> Any:
        """``op`` on the first server that answers it (a server that is down, or that lost
        what it held in a restart, is skipped)."""
        failures = []
        missing = None
        for location, client in self._clients.items():
            try:
                return op(client)
            except ServerUnavailableError as e:
                failures.append(f"{location}: {e}")
            except RemoteNotFoundError as e:
                missing = e
        if missing is not None:
            raise missing
        raise ServerUnavailableError(f"{what}: no server answered: " + "; ".join(failures))

    def _map(self, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        info = self._any(f"info of {name!r}", lambda c: c.info(name))
        return info, _shard_map(info)

    def _on_replicas(
        self, name: str, index: int, shard: dict[str, Any], op: Callable[[Client], Any]
    ) -> Any:
        """``op`` on the first replica of shard ``index`` that answers."""
        failures = []
        for location in shard["locations"]:
            client = self._client(location)
            try:
                return op(client)
            except (ServerUnavailableError, RemoteNotFoundError) as e:
                failures.append(f"{location}: {e}")
        start, end = shard["rows"]
        raise ServerUnavailableError(
            f"shard {index} of {name!r} (rows [{start}, {end})): none of its "
            f"{len(shard['locations'])} replica(s) answered: " + "; ".join(failures)
        )

    def _parallel(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Runs every job (each releases the GIL while data moves); all results, or the first
        error once every job has ended."""
        futures = [self._pool.submit(job) for job in jobs]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    # -- items ---------------------------------------------------------------------------

    def put(self, name: str, data: Any, *, shards: int | None = None) -> None:
        """Stores ``data`` (an array, a dict of arrays sharing axis 0, or a table) under
        ``name``, its rows split into ``shards`` contiguous shards (default: one per server),
        shard ``i`` on servers ``i, i+1, ...`` (``replication`` of them). Returns once every
        shard and replica, and the map on every server, is acknowledged.

        >>> import numpy as np, arrowbridge
        >>> from arrowbridge.cluster import ClusterClient
        >>> servers = [arrowbridge.serve() for _ in range(3)]
        >>> client = ClusterClient([s.location for s in servers], replication=2)
        >>> client.put("x", np.arange(6), shards=3)
        >>> [len(s["locations"]) for s in client.shards("x")]
        [2, 2, 2]
        >>> client.close(); [s.shutdown() for s in servers] and None
        """
        form, names, arrays = _columns(data)
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            raise ShapeError(
                f"put {name!r}: sharded columns must share axis 0 (rows); got lengths "
                f"{sorted(lengths)}"
            )
        rows = lengths.pop() if lengths else 0
        bounds = shard_bounds(rows, shards or len(self.locations))
        n = len(self.locations)
        plan = []
        for i, (start, end) in enumerate(bounds):
            replicas = [self.locations[(i + r) % n] for r in range(self.replication)]
            plan.append(
                {
                    "name": f"{name}.shard-{i}-of-{len(bounds)}",
                    "rows": [start, end],
                    "bytes": sum(int(a[start:end].nbytes) for a in arrays),
                    "locations": replicas,
                }
            )

        def put_shard(shard: dict[str, Any], location: str) -> None:
            start, end = shard["rows"]
            part = [a[start:end] for a in arrays]
            self._client(location)._native.put(shard["name"], names, part, form)

        self._parallel(
            [
                functools.partial(put_shard, shard, location)
                for shard in plan
                for location in shard["locations"]
            ]
        )
        first = plan[0]
        schema_ipc = self._client(first["locations"][0])._native.info(first["name"])["schema_ipc"]
        self._commit(
            name, schema_ipc, {"rows": rows, "bytes": sum(s["bytes"] for s in plan), "shards": plan}
        )

    def _commit(self, name: str, schema_ipc: bytes, shard_map: dict[str, Any]) -> None:
        """Puts the map of ``name``, whose shards are stored, on every server (and tells the
        control plane); then deletes the shards of the item it replaced that it does not
        reuse."""
        try:
            _, old = self._map(name)
        except RemoteNotFoundError:
            old = None
        map_json = json.dumps(shard_map)
        self._parallel(
            [
                functools.partial(c._native.put_map, name, schema_ipc, map_json)
                for c in self._clients.values()
            ]
        )
        if self._on_map is not None:
            self._on_map(name, schema_ipc, map_json)
        if old is not None:
            keep = {(s["name"], loc) for s in shard_map["shards"] for loc in s["locations"]}
            self._delete_shards(old, keep)

    def _delete_shards(self, shard_map: dict[str, Any], keep: set[tuple[str, str]]) -> None:
        def delete(shard_name: str, location: str) -> None:
            try:
                self._client(location).delete(shard_name)
            except (RemoteNotFoundError, ServerUnavailableError):
                pass  # gone already, or with its server

        self._parallel(
            [
                functools.partial(delete, s["name"], loc)
                for s in shard_map["shards"]
                for loc in s["locations"]
                if (s["name"], loc) not in keep
            ]
        )

    def get(self, name: str) -> Any:
        """The item ``name`` in the form it was put, its shards fetched in parallel into one
        contiguous array per column (from the next replica where a server does not
        answer)."""
        return self._any(f"get {name!r}", lambda c: c.get(name))

    def shards(self, name: str) -> list[dict[str, Any]]:
        """The shards of ``name`` in row order: ``name`` (the item each replica stores),
        ``rows`` ``[start, end)``, ``bytes`` and ``locations``."""
        _info, shard_map = self._map(name)
        if shard_map is None:
            raise RemoteNotFoundError(f"{name!r} is not a sharded item of this cluster")
        return shard_map["shards"]

    def info(self, name: str) -> dict[str, Any]:
        """What is stored under ``name`` (as :meth:`Client.info`), plus ``shards``: how many
        shards hold its rows."""
        info, shard_map = self._map(name)
        info["shards"] = len(shard_map["shards"]) if shard_map else 1
        return info

    def list(self) -> list[dict[str, Any]]:
        """Every item, sharded ones once each (see :meth:`Client.list`)."""
        return self._any("list", lambda c: c.list())

    def delete(self, name: str) -> None:
        """Deletes ``name``: its map from every server, its shards from every replica."""
        _, shard_map = self._map(name)

        def delete_map(client: Client) -> None:
            try:
                client.delete(name)
            except (RemoteNotFoundError, ServerUnavailableError):
                pass  # not there, or down: the control plane forgets it too

        self._parallel([functools.partial(delete_map, c) for c in self._clients.values()])
        if shard_map is not None:
            self._delete_shards(shard_map, set())
        if self._on_map is not None:
            self._on_map(name, None, None)

    # -- kernels -------------------------------------------------------------------------

    stored = staticmethod(Client.stored)

    def kernels(self) -> dict[str, dict[str, Any]]:
        """Every kernel: signature, params, arity and ``distribution`` (how it runs on
        shards: ``"rows"``, ``{"reduce": "sum", "axis": "axis"}`` or ``"local"``)."""
        if self._kernels is None:
            body = self._any(
                "describe_kernels", lambda c: c._native.action("describe_kernels", b"")
            )
            self._kernels = json.loads(body)
        return self._kernels

    def _distribution(self, kernel: str, ndim: int, params: Mapping[str, Any]) -> Any:
        kernels = self.kernels()
        if kernel not in kernels:
            raise UnknownKernelError(
                f"no kernel {kernel!r} on the cluster's servers; available: "
                + ", ".join(sorted(kernels))
            )
        dist = kernels[kernel]["distribution"]
        if not isinstance(dist, dict):
            return dist
        axis_param = dist.get("axis")
        axis = None if axis_param is None else params.get(axis_param)
        if axis is None:
            return dist
        axes = [axis] if isinstance(axis, int) else list(axis)
        if 0 in [a % ndim if ndim else a for a in axes]:
            return dist
        return "rows"  # reduces within rows: rows stay apart

    def call(self, kernel: str, *args: Any, gather: bool = False, **params: Any) -> Any:
        """Runs ``kernel``. When the first argument is :meth:`stored` ``(name)`` of a sharded
        item, it runs on every shard's server in parallel, with the other arguments sent
        whole, and the results combine as the kernel declares (see :meth:`kernels`): row-wise
        results are concatenated in row order, reductions combined (partial sums added).
        A kernel that declares neither raises :class:`NotDistributableError`, unless
        ``gather=True``, which fetches the item and runs the kernel on one server.

        Other stored arguments are fetched and sent whole.
        """
        if not args or not isinstance(args[0], Stored):
            return self._any(f"call {kernel!r}", lambda c: c.call(kernel, *args, **params))
        name = args[0].name
        info, shard_map = self._map(name)
        rest = [self.get(a.name) if isinstance(a, Stored) else a for a in args[1:]]
        if shard_map is None:
            return self._any(
                f"call {kernel!r}", lambda c: c.call(kernel, Stored(name), *rest, **params)
            )
        shards = shard_map["shards"]
        ndim = len(info["columns"][0].get("shape", [0])) if info["columns"] else 1
        # One shard is the whole item: any kernel runs on it as it is.
        dist = "whole" if len(shards) == 1 else self._distribution(kernel, ndim, params)
        if dist == "local":
            if not gather:
                raise NotDistributableError(
                    f"kernel {kernel!r} does not say how its results on the {len(shards)} "
                    f"shards of {name!r} combine (its distribution is 'local'); pass "
                    "gather=True to fetch the item and run it in one place"
                )
            whole = self.get(name)
            return self._any(f"call {kernel!r}", lambda c: c.call(kernel, whole, *rest, **params))

        def on_shard(index: int, shard: dict[str, Any]) -> tuple[Any, ...]:
            def run(client: Client) -> tuple[Any, ...]:
                out = client.call(kernel, Stored(shard["name"]), *rest, **params)
                return out if isinstance(out, tuple) else (out,)

            return self._on_replicas(name, index, shard, run)

        partials = self._parallel(
            [functools.partial(on_shard, i, shard) for i, shard in enumerate(shards)]
        )
        if dist == "whole":
            outputs = list(partials[0])
        elif dist == "rows":
            for shard, outputs in zip(shards, partials, strict=True):
                start, end = shard["rows"]
                for out in outputs:
                    if np.ndim(out) == 0 or len(out) != end - start:
                        raise ShapeError(
                            f"kernel {kernel!r} is declared row-wise, but its result on "
                            f"{shard['name']!r} (rows [{start}, {end})) has shape "
                            f"{np.shape(out)}, not {end - start} rows"
                        )
            outputs = [np.concatenate(column) for column in zip(*partials, strict=True)]
        else:
            combine = _COMBINE[dist["reduce"]]
            outputs = [functools.reduce(combine, column) for column in zip(*partials, strict=True)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every connection; idempotent."""
        for client in self._clients.values():
            client.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrowbridge.cluster.ClusterClient of {len(self.locations)} server(s)>"


__all__ = ["SHARDS_KEY", "ClusterClient", "shard_bounds"]
