"""Ray Data over sharded items: a datasource that reads an item as a Dataset (one read task
per endpoint, N-D columns as Ray's tensor type) and a datasink that writes a Dataset into
the cluster (one shard per write task). For example (tests/test_cluster.py runs it)::

    cluster = arrowbridge.cluster.start(2)
    cluster.write_dataset(ray.data.range_tensor(100, shape=(3,)), "t")
    cluster.read_dataset("t").materialize().num_blocks()  # one block per shard
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray, ArrowVariableShapedTensorArray

import arrowbridge

from .client import ClusterClient, _check_name, _nbytes, _shard_map, _version


def _block_column(a: Any) -> pa.Array:
    """One column of a block: a 1-D array as an Arrow array, an N-D one as Ray's tensor type
    (both over the same memory), ragged data (a list of arrays) as Ray's variable-shaped
    tensor type (a copy, in Ray's layout)."""
    if isinstance(a, list):
        return ArrowVariableShapedTensorArray.from_numpy(a)
    return arrowbridge.to_arrow(a) if a.ndim == 1 else ArrowTensorArray.from_numpy(a)


def _table(columns: dict[str, Any]) -> pa.Table:
    """A block of NumPy columns (see :func:`_block_column`)."""
    return pa.table({name: _block_column(a) for name, a in columns.items()})


def _columns(block: Any) -> dict[str, Any]:
    """A block's columns as NumPy arrays: Ray's tensor columns as N-D arrays, ragged columns
    (Ray's variable-shaped tensors, Arrow's ``arrow.variable_shape_tensor``) as lists of
    arrays."""
    table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
    columns: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if isinstance(chunk, ArrowVariableShapedTensorArray):
            columns[name] = list(chunk.to_numpy())
        elif getattr(chunk.type, "extension_name", None) == "arrow.variable_shape_tensor":
            columns[name] = arrowbridge.to_numpy(chunk)
        elif isinstance(chunk, pa.ExtensionArray) and hasattr(chunk, "to_numpy"):
            columns[name] = np.asarray(chunk.to_numpy())
        else:
            columns[name] = arrowbridge.to_numpy(chunk)
    return columns


class FlightDatasource(Datasource):
    """An item of an arrowbridge cluster (or of one server) as a Ray Dataset: one read task
    per endpoint of its FlightInfo, opened on the endpoint's replicas in turn. Each task
    streams its rows (:meth:`arrowbridge.Client.stream`) and yields a block per batch of
    ``batch_rows`` rows (by default about 8 MiB of them), so a worker holds a few batches
    however large its shard is: with servers that keep their items in a ``data_dir``, an
    item larger than a worker's memory, or than the servers', reads through."""

    def __init__(
        self,
        locations: Sequence[str],
        name: str,
        *,
        token: str | None = None,
        batch_rows: int | None = None,
    ):
        self._locations = list(locations)
        self._name = name
        self._token = token
        self._batch_rows = batch_rows
        with ClusterClient(self._locations, token=token) as client:
            info = client.info(name)
        shard_map = _shard_map(info)
        if shard_map is None:
            # One server's item: its endpoint is the item itself, wherever it is stored.
            shard_map = {
                "shards": [
                    {
                        "name": name,
                        "rows": [0, info["rows"]],
                        "bytes": info["bytes"],
                        "locations": self._locations,
                    }
                ]
            }
        self._shards = shard_map["shards"]
        self._bytes = int(info["bytes"])

    def get_name(self) -> str:
        return f"arrowbridge({self._name})"

    def estimate_inmemory_data_size(self) -> int | None:
        return self._bytes

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        token, item, batch_rows = self._token, self._name, self._batch_rows

        def reader(index: int, shard: dict[str, Any]) -> Callable[[], Iterable[pa.Table]]:
            def read() -> Iterable[pa.Table]:
                with ClusterClient(shard["locations"], token=token) as client:
                    stream = client._on_replicas(
                        item,
                        index,
                        shard,
                        lambda c: c._native.stream(shard["name"], batch_rows=batch_rows),
                    )
                    for batch in stream:
                        yield _table(batch)

            return read

        tasks = []
        for index, shard in enumerate(self._shards):
            start, end = shard["rows"]
            metadata = BlockMetadata(
                num_rows=end - start,
                size_bytes=shard["bytes"],
                exec_stats=None,
                input_files=None,
            )
            tasks.append(
                ReadTask(reader(index, shard), metadata, per_task_row_limit=per_task_row_limit)
            )
        return tasks


class FlightDatasink(Datasink):
    """Writes a Dataset into a cluster as one sharded item: each write task stores its
    blocks as one shard (on ``replication`` servers), and the map is put on every server
    once every task is done. Rows keep the order of the write tasks: set
    ``ray.data.DataContext.get_current().execution_options.preserve_order = True`` for
    the Dataset's own order.

    Atomic as :meth:`ClusterClient.put`: the shards are items of this write's own
    (``name.part-<i>.v<token>``, a fresh token per sink), the map is published last, and a
    write that fails deletes what it stored. Use one sink per write."""

    def __init__(
        self,
        locations: Sequence[str],
        name: str,
        *,
        token: str | None = None,
        replication: int = 1,
        on_map: Callable[[str, bytes | None, str | None], None] | None = None,
    ):
        self._version = _version()
        _check_name(name, "write_dataset", self._part(999_999))
        self._locations = list(locations)
        self._name = name
        self._token = token
        self._replication = replication
        self._on_map = on_map

    def _part(self, index: int, name: str = "") -> str:
        """The item holding the shard that write task ``index`` stores."""
        return f"{name}.part-{index}.v{self._version}"

    def get_name(self) -> str:
        return f"arrowbridge({self._name})"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"index": ctx.task_idx, "rows": 0}
        columns = _columns(pa.concat_tables(tables))
        n = len(self._locations)
        locations = [self._locations[(ctx.task_idx + r) % n] for r in range(self._replication)]
        shard = self._part(ctx.task_idx, self._name)
        with ClusterClient(locations, token=self._token) as client:
            for location in locations:
                client._client(location).put(shard, columns)
            schema_ipc = client._client(locations[0])._native.info(shard)["schema_ipc"]
        return {
            "index": ctx.task_idx,
            "name": shard,
            "rows": len(next(iter(columns.values()))),
            "bytes": sum(_nbytes(a) for a in columns.values()),
            "locations": locations,
            "schema_ipc": schema_ipc,
        }

    def on_write_complete(self, write_result: Any) -> None:
        written = sorted(
            (r for r in write_result.write_returns if r["rows"]), key=lambda r: r["index"]
        )
        if not written:
            raise ValueError(f"writing {self._name!r}: the Dataset has no rows")
        shards, start = [], 0
        for r in written:
            shards.append(
                {
                    "name": r["name"],
                    "rows": [start, start + r["rows"]],
                    "bytes": r["bytes"],
                    "locations": r["locations"],
                }
            )
            start += r["rows"]
        shard_map = {"rows": start, "bytes": sum(s["bytes"] for s in shards), "shards": shards}
        with ClusterClient(self._locations, token=self._token, on_map=self._on_map) as client:
            client._commit(self._name, written[0]["schema_ipc"], shard_map)

    def on_write_failed(self, error: Exception) -> None:
        """Deletes the shards the write tasks stored (no map names them yet)."""
        prefix, suffix = f"{self._name}.part-", f".v{self._version}"
        with ClusterClient(self._locations, token=self._token) as client:
            for location, server in client._servers():
                try:
                    names = [i["name"] for i in server.list()]
                except arrowbridge.FlightCallError:
                    continue  # down: nothing to do there now
                stored = [n for n in names if n.startswith(prefix) and n.endswith(suffix)]
                client._delete_shards(
                    {"shards": [{"name": n, "locations": [location]} for n in stored]}, set()
                )


def read_dataset(
    locations: Sequence[str], name: str, *, token: str | None = None, batch_rows: int | None = None
) -> Any:
    """The item ``name`` as a Ray Dataset (see :class:`FlightDatasource`)."""
    import ray.data

    source = FlightDatasource(locations, name, token=token, batch_rows=batch_rows)
    return ray.data.read_datasource(source)


def write_dataset(
    dataset: Any,
    locations: Sequence[str],
    name: str,
    *,
    token: str | None = None,
    replication: int = 1,
    on_map: Callable[[str, bytes | None, str | None], None] | None = None,
) -> None:
    """Writes ``dataset`` into the servers at ``locations`` as the sharded item ``name``
    (see :class:`FlightDatasink`)."""
    dataset.write_datasink(
        FlightDatasink(locations, name, token=token, replication=replication, on_map=on_map)
    )


__all__ = ["FlightDatasink", "FlightDatasource", "read_dataset", "write_dataset"]
