"""The cluster client for asyncio: :class:`AsyncClusterClient` does what
:class:`~arrowbridge.cluster.ClusterClient` does, awaited, over one
:class:`arrowbridge.aio.AsyncClient` per server: a fan-out to the servers is an
``asyncio.gather`` of their calls, with no thread per call or per server.

>>> import asyncio, numpy as np, arrowbridge
>>> from arrowbridge.cluster import AsyncClusterClient
>>> async def main(locations):
...     async with AsyncClusterClient(locations) as cluster:
...         await cluster.put("x", np.arange(10.0).reshape(5, 2))
...         info = await cluster.info("x")
...         total = await cluster.call("sum", cluster.stored("x"), axis=0)
...         return info["shards"], (await cluster.get("x"))[:2], total
>>> with arrowbridge.serve() as a, arrowbridge.serve() as b:
...     asyncio.run(main([a.location, b.location]))
(2, array([[0., 1.],
       [2., 3.]]), array([20., 25.]))
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any

from ..aio import AsyncClient, AsyncItemStream, _async_batches, _to_async
from ..errors import (
    FlightCallError,
    ItemReplacedError,
    RemoteNotFoundError,
    ServerUnavailableError,
    _as_part_of,
)
from ..flight.client import Stored, _batches, _names, _streamed, kernel_distribution
from .client import (
    _ANSWERED,
    _CLEANUP_TIMEOUT,
    _READ_ATTEMPTS,
    _TRY_NEXT_REPLICA,
    _TRY_NEXT_SERVER,
    ClusterClient,
    _brought_back,
    _check_locations,
    _check_name,
    _combined,
    _failure,
    _given_up,
    _held_in,
    _map_order,
    _no_replica,
    _nothing_to_delete,
    _old_shards_left,
    _ordered,
    _Plan,
    _put_kind,
    _raced,
    _read_again,
    _removed,
    _replaced,
    _shard_map,
    _shard_pairs,
    _stored_distribution,
    _StreamedShards,
    _unanswered,
)

#: What a server holds under a name: its schema (IPC) and map (JSON text, or None for an
#: item that is not sharded); None for nothing.
_Held = tuple[bytes, str | None] | None


async def _outcome(call: Awaitable[Any]) -> tuple[bool, Any]:
    """``(False, result)`` of ``call``, or ``(True, exception)`` if it raised: a result that
    is an exception (a server's answer to a probe, say) is not mistaken for a failure."""
    try:
        return False, await call
    except BaseException as error:  # a child's cancellation too: the caller re-raises it
        return True, error


async def _held(client: AsyncClient, name: str) -> _Held:
    try:
        return _held_in(await client._info_raw(name))
    except RemoteNotFoundError:
        return None


class AsyncClusterClient:
    """Reads and writes items sharded by rows over the Flight servers at ``locations``, for
    asyncio: every method of :class:`~arrowbridge.cluster.ClusterClient`, awaited, with the
    same shards, maps, atomic puts and replica fail-over (items either client puts, the
    other reads). Data moves over gRPC, as with :class:`arrowbridge.aio.AsyncClient`.

    ``timeout`` (seconds) bounds each call to one server. Cancelling the awaiting task
    cancels the calls under way (their streams are reset); a put cancelled before its
    commit deletes the shards it stored in a task of its own (bounded by ``timeout``, or
    10 s), and the previous version reads as before. ``on_map(name, schema_ipc, map_json)``
    is told of every map put (and ``(name, None, None)`` of every delete); it may return an
    awaitable (a Ray ``ObjectRef``, say), which is awaited.
    """

    def __init__(
        self,
        locations: Sequence[str],
        *,
        token: str | None = None,
        replication: int = 1,
        timeout: float | None = None,
        on_map: Callable[[str, bytes | None, str | None], Any] | None = None,
    ):
        self.locations = _check_locations(locations, replication)
        self.replication = int(replication)
        self._token, self._timeout, self._on_map = token, timeout, on_map
        # The token goes to the cluster's own servers, which the endpoints of its maps name.
        self._clients = {
            loc: AsyncClient(loc, token=token, timeout=timeout, trusted=self.locations)
            for loc in self.locations
        }
        self._kernels: dict[str, dict[str, Any]] | None = None

    # -- helpers -------------------------------------------------------------------------

    def _client(self, location: str) -> AsyncClient:
        """The client of ``location``: one of the cluster's, or one made for a replica a map
        names elsewhere (which is not sent the token)."""
        if location not in self._clients:
            self._clients[location] = AsyncClient(location, timeout=self._timeout)
        return self._clients[location]

    def _servers(self) -> list[tuple[str, AsyncClient]]:
        return [(location, self._clients[location]) for location in self.locations]

    async def _any(self, what: str, op: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
        """``op`` on the first server that answers it."""
        failures, errors = [], []
        missing = None
        for location, client in self._servers():
            try:
                return await op(client)
            except _TRY_NEXT_SERVER as e:
                failures.append(_failure(location, e))
                errors.append(e)
            except RemoteNotFoundError as e:
                missing = e
        if missing is not None:
            raise missing
        raise _given_up(errors, _unanswered(what, failures))

    async def _map(self, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        info = await self._any(f"info of {name!r}", lambda c: c.info(name))
        return info, _shard_map(info)

    async def _on_replicas(
        self,
        name: str,
        index: int,
        shard: dict[str, Any],
        op: Callable[[AsyncClient], Awaitable[Any]],
    ) -> Any:
        """``op`` on the first replica of shard ``index`` that answers."""
        failures, errors = [], []
        for location in shard["locations"]:
            try:
                return await op(self._client(location))
            except _TRY_NEXT_REPLICA as e:
                failures.append(_failure(location, e))
                errors.append(e)
        raise _given_up(errors, _no_replica(name, index, shard, failures))

    @staticmethod
    async def _parallel(calls: Iterable[Awaitable[Any]]) -> list[Any]:
        """Every call at once; all results, or the first error once every call has ended.
        Cancelling the awaiting task cancels them all."""
        calls = list(calls)
        try:
            outcomes = await asyncio.gather(*map(_outcome, calls))
        finally:
            # Cancelled before some had started: they never will ("never awaited" else).
            for call in calls:
                if inspect.iscoroutine(call) and inspect.getcoroutinestate(call) == "CORO_CREATED":
                    call.close()
        for raised, value in outcomes:
            if raised:
                raise value
        return [value for _, value in outcomes]

    async def _afterwards(self, error: BaseException, method: str, *args: Any) -> None:
        """Runs the cleanup of a put, the method ``method(*args, timeout)`` (``_discard``,
        ``_roll_back`` or ``_delete_shards``): at once after an error. After a
        cancellation, the blocking client's twin of it runs on a thread of its own: the
        cancelled task ends at once, and the cleanup outlives it and the event loop (which
        ``asyncio.run`` closes, cancelling the tasks left, right after a cancelled main)."""
        if isinstance(error, Exception):
            await getattr(self, method)(*args, self._timeout)
            return
        locations, token, replication = self.locations, self._token, self.replication
        # Bounded, so that the interpreter's exit never waits on a silent server.
        timeout = self._timeout or _CLEANUP_TIMEOUT

        def later() -> None:
            try:
                with ClusterClient(
                    locations, token=token, replication=replication, shm=False, timeout=timeout
                ) as blocking:
                    getattr(blocking, method)(*args, timeout)
            except (FlightCallError, RuntimeError):
                pass  # a server is gone, or the interpreter is exiting

        threading.Thread(target=later, name="arrowbridge-cluster-cleanup", daemon=True).start()

    async def _tell(self, name: str, schema_ipc: bytes | None, map_json: str | None) -> None:
        if self._on_map is not None:
            told = self._on_map(name, schema_ipc, map_json)
            if inspect.isawaitable(told):
                await told

    async def _read(self, name: str, read: Callable[[], Awaitable[Any]]) -> Any:
        """``read()``, started again when it failed for want of a shard (or a server) and the
        map of ``name`` changed meanwhile (see :meth:`ClusterClient._read`)."""
        seen: dict[str, Any] | None = None
        error: FlightCallError | None = None
        for _ in range(_READ_ATTEMPTS):
            try:
                return await read()
            except FlightCallError as e:
                if not _read_again(e):
                    raise
                error = e
            try:
                _, now = await self._map(name)
            except (RemoteNotFoundError, ServerUnavailableError):
                raise error from None
            if now is None or now == seen:
                raise error
            seen = now
        assert error is not None
        raise error

    # -- items ---------------------------------------------------------------------------

    async def put(
        self,
        name: str,
        data: Any,
        *,
        shards: int | None = None,
        shard_bytes: int | None = None,
    ) -> None:
        """Stores ``data`` under ``name`` in shards, as :meth:`ClusterClient.put` does (an
        array, a dict of arrays, a table, or a stream of batches); ``data`` may also be an
        async iterable of batches. Atomic: readers see the previous version or this one.

        >>> import asyncio, numpy as np, arrowbridge
        >>> from arrowbridge.cluster import AsyncClusterClient
        >>> async def rows():
        ...     for i in range(3):
        ...         yield np.full(4, i)
        >>> async def main(locations):
        ...     async with AsyncClusterClient(locations) as cluster:
        ...         await cluster.put("s", rows(), shard_bytes=64)
        ...         shards = [s["rows"] for s in await cluster.shards("s")]
        ...         return shards, (await cluster.get("s")).tolist()
        >>> with arrowbridge.serve() as a, arrowbridge.serve() as b:
        ...     asyncio.run(main([a.location, b.location]))
        ([[0, 8], [8, 12]], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        """
        streamed = isinstance(data, AsyncIterable) or _streamed(data)
        stream_shard_bytes = _put_kind(name, data, shards, shard_bytes, streamed)
        if stream_shard_bytes is not None:
            batches = (
                _async_batches(data)
                if isinstance(data, AsyncIterable)
                else _to_async(_batches(data))
            )
            await self._put_stream(name, batches, stream_shard_bytes)
            return
        plan = _Plan(name, data, shards, self.locations, self.replication)
        try:
            await self._parallel(
                self._client(location)._put_columns(
                    shard["name"], plan.names, plan.parts(shard), plan.form
                )
                for shard in plan.shards
                for location in shard["locations"]
            )
            first = plan.shards[0]
            info = await self._client(first["locations"][0])._info_raw(first["name"])
        except BaseException as error:
            # Nothing refers to these shards yet: the previous version is untouched.
            stored = {"shards": plan.shards}
            await self._afterwards(error, "_discard", stored)
            raise
        await self._commit(name, info["schema_ipc"], plan.shard_map())

    async def _put_stream(self, name: str, batches: Any, shard_bytes: int) -> None:
        stream = _StreamedShards(name, self.locations, self.replication)
        puts: list[tuple[AsyncClient, Any]] = []  # the shard being written's, per replica
        try:
            index = 0
            async for batch_form, names, arrays in batches:
                stream.check(index, batch_form, names, arrays)
                index += 1
                if stream.shard is None:
                    shard = stream.start()
                    puts = []
                    for location in shard["locations"]:
                        client = self._client(location)
                        puts.append((client, client._native.put_stream(shard["name"], batch_form)))
                await self._parallel(c._send(p, names, arrays, self._timeout) for c, p in puts)
                stream.add(arrays)
                if stream.shard is not None and stream.shard["bytes"] >= shard_bytes:
                    await self._parallel(c._finish(p, self._timeout) for c, p in puts)
                    stream.end()
                    puts = []
            if stream.shard is not None:
                await self._parallel(c._finish(p, self._timeout) for c, p in puts)
                stream.end()
                puts = []
            shard_map = stream.shard_map()
            first = shard_map["shards"][0]
            info = await self._client(first["locations"][0])._info_raw(first["name"])
        except BaseException as error:
            for _, put in puts:
                put.abort()  # the shard under way: its servers store nothing
            stored = stream.stored()
            await self._afterwards(error, "_discard", stored)
            raise
        await self._commit(name, info["schema_ipc"], shard_map)

    async def _commit(self, name: str, schema_ipc: bytes, shard_map: dict[str, Any]) -> None:
        """Publishes the map of ``name`` on every server (the commit point), tells
        ``on_map``, then deletes the shards of the version it replaced; a newer put's map
        wins where it is first; on failure, every server that may have taken the new map
        undoes it (see :meth:`ClusterClient._commit`)."""
        servers = self._servers()
        try:
            held = await self._parallel(_held(c, name) for _, c in servers)
        except BaseException as error:
            await self._afterwards(error, "_discard", shard_map)
            raise
        before = dict(zip(self.locations, held, strict=True))
        shard_map = _ordered(shard_map, before.values())
        map_json = json.dumps(shard_map)
        published: dict[str, str | None] = {}  # location: the map ours replaced there
        superseded: set[str] = set()
        refused: set[str] = set()  # publishes a server answered with an error

        async def publish(location: str, client: AsyncClient) -> None:
            try:
                published[location] = await client._put_map(name, schema_ipc, map_json)
            except ItemReplacedError:
                superseded.add(location)  # a newer put's map is there, and stays
            except _ANSWERED:
                refused.add(location)
                raise

        try:
            await self._parallel(publish(loc, c) for loc, c in servers)
            if not superseded:
                await self._tell(name, schema_ipc, map_json)
        except BaseException as error:
            await self._afterwards(
                error, "_roll_back", name, refused | superseded, shard_map, error
            )
            raise
        if superseded:
            if not published:
                await self._after_commit(self._discard, shard_map)  # stored nowhere: never read
            return
        old, keep = _replaced(before.values(), shard_map, published.values())
        raced = _raced(shard_map, published.values())
        _old_shards_left(
            name, await self._after_commit(self._delete_replaced, name, old, keep, raced)
        )

    async def _delete_replaced(
        self,
        name: str,
        old: dict[str, Any],
        keep: set[tuple[str, str]],
        raced: list[Any] | None,
        timeout: float | None = None,
    ) -> list[tuple[str, FlightCallError]]:
        """Deletes the shards of the versions a committed put replaced, and when puts
        raced, of the older maps the servers keep (see
        :meth:`ClusterClient._delete_replaced`)."""
        if raced is not None:
            body = _map_order(name, raced)

            async def below(client: AsyncClient) -> list[dict[str, Any]]:
                try:
                    reply = await client._action("maps_below", body, timeout)
                except FlightCallError:
                    return []  # their shards stay: list shows them
                return json.loads(reply)["maps"]

            maps = await self._parallel(below(c) for _, c in self._servers())
            old = {
                "shards": old["shards"] + [s for found in maps for m in found for s in m["shards"]]
            }
        return await self._delete_shards(old, keep, timeout)

    async def _after_commit(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await method(*args)``: the deletes that follow a put's commit, which go on in
        the background when the task is cancelled (see :meth:`ClusterClient._after_commit`)."""
        try:
            return await method(*args)
        except BaseException as error:
            if not isinstance(error, Exception):
                await self._afterwards(error, method.__name__, *args)
            raise

    async def _roll_back(
        self,
        name: str,
        refused: set[str],
        shard_map: dict[str, Any],
        error: BaseException,
        timeout: float | None = None,
    ) -> None:
        """After a failed publish: every server that may hold the new map undoes it, the
        newest map they brought back is published on every server, and the new shards are
        deleted unless a server could not be asked (see :meth:`ClusterClient._roll_back`)."""
        body = _map_order(name, shard_map["order"])

        async def undo(location: str) -> tuple[str | None, bytes | None]:
            if location in refused:
                return None, None  # the server answered the publish: no map of ours there
            try:
                reply = await self._clients[location]._action("undo_map", body, timeout)
            except FlightCallError as e:
                return f"{location}: {e}", None
            return None, reply

        outcomes = await self._parallel(map(undo, self.locations))
        stuck = [failure for failure, _ in outcomes if failure]
        newest = _brought_back([reply for _, reply in outcomes])
        if newest is not None:
            await self._roll_forward(name, newest, timeout)
        if not stuck:
            await self._discard(shard_map, timeout)
        elif hasattr(error, "add_note"):
            error.add_note(
                f"put {name!r}: the new map may stay on server(s) that could not undo it "
                f"({'; '.join(stuck)}), so its shards were kept"
            )

    async def _roll_forward(self, name: str, newest: dict[str, Any], timeout: float | None) -> None:
        """Publishes ``newest`` on every server (see :meth:`ClusterClient._roll_forward`)."""
        first = newest["shards"][0]
        schema = None
        for location in first["locations"]:
            try:
                schema = (await self._client(location)._info_raw(first["name"], timeout))[
                    "schema_ipc"
                ]
                break
            except FlightCallError:
                continue
        if schema is None:
            return  # its shards are gone: the servers keep what they brought back
        text = json.dumps(newest)

        async def publish(client: AsyncClient) -> None:
            try:
                await client._put_map(name, schema, text, timeout)
            except FlightCallError:
                pass  # a newer map is there, or the server is gone

        await self._parallel(publish(c) for _, c in self._servers())

    async def _discard(self, shard_map: dict[str, Any], timeout: float | None = None) -> None:
        """Deletes the shards of a put that did not commit (see
        :meth:`ClusterClient._discard`)."""
        await self._delete_shards(shard_map, set(), timeout)

    async def _delete_shards(
        self,
        shard_map: dict[str, Any],
        keep: set[tuple[str, str]],
        timeout: float | None = None,
    ) -> list[tuple[str, FlightCallError]]:
        """Deletes every replica of the shards of ``shard_map`` but those in ``keep``,
        best-effort (see :meth:`ClusterClient._delete_shards`); what else failed."""

        async def delete(shard_name: str, location: str) -> tuple[str, FlightCallError] | None:
            try:
                await self._client(location).delete(shard_name, timeout=timeout)
            except RemoteNotFoundError:
                pass  # gone, or refused when it lands
            except ServerUnavailableError:
                pass  # gone with its server
            except FlightCallError as e:
                return f"{shard_name!r} on {location}: {e}", e
            return None

        failures = await self._parallel(delete(*pair) for pair in _shard_pairs(shard_map, keep))
        return [f for f in failures if f is not None]

    async def get(
        self,
        name: str,
        *,
        columns: Iterable[str] | None = None,
        rows: tuple[int, int] | None = None,
    ) -> Any:
        """The item ``name`` (or its ``columns`` and ``rows``), as :meth:`ClusterClient.get`
        returns it: one version, whole, its shards fetched at once."""
        selected = None if columns is None else _names("columns", columns)
        return await self._read(
            name,
            lambda: self._any(f"get {name!r}", lambda c: c.get(name, columns=selected, rows=rows)),
        )

    async def stream(self, name: str, **options: Any) -> AsyncItemStream:
        """The item ``name`` as batches of its rows, shard by shard in row order, for
        ``async for`` (options as :meth:`arrowbridge.aio.AsyncClient.stream`'s); started
        again on the new version when a put replaces the item before its first batch
        arrives (see :meth:`ClusterClient.stream`)."""

        async def start() -> AsyncItemStream:
            stream = await self._any(f"stream {name!r}", lambda c: c.stream(name, **options))
            return await stream._started()

        return await self._read(name, start)

    async def shards(self, name: str) -> list[dict[str, Any]]:
        """The shards of ``name`` in row order (see :meth:`ClusterClient.shards`)."""
        _info, shard_map = await self._map(name)
        if shard_map is None:
            raise RemoteNotFoundError(f"{name!r} is not a sharded item of this cluster")
        return shard_map["shards"]

    async def info(self, name: str) -> dict[str, Any]:
        """What is stored under ``name``, plus ``shards``: how many shards hold its rows."""
        info, shard_map = await self._map(name)
        info["shards"] = len(shard_map["shards"]) if shard_map else 1
        return info

    async def list(self) -> list[dict[str, Any]]:
        """Every item, sharded ones once each."""
        return await self._any("list", lambda c: c.list())

    async def delete(self, name: str) -> None:
        """Deletes ``name``: its map from every server, then its shards from every replica
        (see :meth:`ClusterClient.delete`)."""
        _check_name(name, "delete")
        servers = self._servers()

        async def look(client: AsyncClient) -> _Held | Exception:
            try:
                return await _held(client, name)
            except ServerUnavailableError as e:
                return e

        with _as_part_of(f"delete {name!r}"):
            found = await self._parallel(look(c) for _, c in servers)
        missing = _nothing_to_delete(name, self.locations, found)
        if missing is not None:
            raise missing

        # Ordered as a put is (see ClusterClient.delete).
        tombstone = json.dumps(_ordered({"deleted": True}, found))
        body = _map_order(name, json.loads(tombstone)["order"])

        async def delete_map(client: AsyncClient) -> str | None:
            try:
                return _removed(await client._action("delete_map", body, None))
            except (RemoteNotFoundError, ServerUnavailableError, ItemReplacedError):
                return None  # not there, down (the control plane forgets it too), or newer

        removed = await self._parallel(delete_map(c) for _, c in servers)
        shards, _ = _replaced(found, {"shards": []}, removed)
        failures = await self._delete_shards(shards, set())
        await self._tell(name, None, tombstone)
        if failures:
            raise failures[0][1]  # the map is gone everywhere; a shard is left

    # -- kernels -------------------------------------------------------------------------

    stored = staticmethod(AsyncClient.stored)

    async def kernels(self) -> dict[str, dict[str, Any]]:
        """Every kernel: signature, params, arity and ``distribution`` (see
        :meth:`ClusterClient.kernels`)."""
        if self._kernels is None:
            body = await self._any(
                "describe_kernels", lambda c: c._action("describe_kernels", b"", None)
            )
            self._kernels = json.loads(body)
        return self._kernels

    async def call(self, kernel: str, *args: Any, gather: bool = False, **params: Any) -> Any:
        """Runs ``kernel``; on the shards of a stored sharded first argument at once, the
        results combined as the kernel declares (see :meth:`ClusterClient.call`)."""
        if not args or not isinstance(args[0], Stored):
            return await self._any(f"call {kernel!r}", lambda c: c.call(kernel, *args, **params))
        name = args[0].name
        rest = [await self.get(a.name) if isinstance(a, Stored) else a for a in args[1:]]
        return await self._read(name, lambda: self._call_stored(kernel, name, rest, gather, params))

    async def _call_stored(
        self, kernel: str, name: str, rest: Sequence[Any], gather: bool, params: dict[str, Any]
    ) -> Any:
        info, shard_map = await self._map(name)
        if shard_map is None:
            return await self._any(
                f"call {kernel!r}", lambda c: c.call(kernel, Stored(name), *rest, **params)
            )
        shards = shard_map["shards"]
        described = await self.kernels() if len(shards) > 1 else {}
        dist = _stored_distribution(
            kernel,
            name,
            info,
            shard_map,
            gather,
            lambda ndim: kernel_distribution(described, kernel, ndim, params),
        )
        if dist == "local":
            whole = await self.get(name)
            return await self._any(
                f"call {kernel!r}", lambda c: c.call(kernel, whole, *rest, **params)
            )

        async def on_shard(index: int, shard: dict[str, Any]) -> tuple[Any, ...]:
            async def run(client: AsyncClient) -> tuple[Any, ...]:
                out = await client.call(kernel, Stored(shard["name"]), *rest, **params)
                return out if isinstance(out, tuple) else (out,)

            return await self._on_replicas(name, index, shard, run)

        partials = await self._parallel(on_shard(i, shard) for i, shard in enumerate(shards))
        return _combined(kernel, dist, shards, partials)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every connection (calls under way end with an error); idempotent."""
        for client in self._clients.values():
            client.close()

    async def __aenter__(self) -> AsyncClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrowbridge.cluster.AsyncClusterClient of {len(self.locations)} server(s)>"


__all__ = ["AsyncClusterClient"]
