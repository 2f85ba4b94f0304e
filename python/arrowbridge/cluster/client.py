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
import numbers
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import (
    AuthenticationError,
    FlightCallError,
    FlightTimeoutError,
    InvalidArgumentError,
    InvalidLocationError,
    InvalidNameError,
    ItemReplacedError,
    NotDistributableError,
    RemoteInvalidError,
    RemoteNotFoundError,
    RemoteOutOfMemoryError,
    RemoteStorageError,
    ServerUnavailableError,
    ShapeError,
    _as_part_of,
)
from ..flight.client import (
    COMBINE,
    Client,
    Stored,
    _batches,
    _columns,
    _streamed,
    check_rows,
    kernel_distribution,
)

#: Schema metadata key of a sharded item's map (see ``arrowbridge_flight::shards``).
SHARDS_KEY = "arrowbridge.shards"

#: The server's rule for item names (``arrowbridge_flight::store::check_name``).
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", re.ASCII)
_MAX_NAME = 200
#: What marks the items that hold shards: ``.shard-<i>-of-<n>`` (a put's, followed by the
#: version ``.v<token>`` since puts are atomic; without it before) and ``.part-<i>`` (a Ray
#: Data write's). A user name containing one could overwrite another item's shard.
_RESERVED = re.compile(r"\.(?:shard-[0-9]+-of-[0-9]+|part-[0-9]+)(?=\.|$)", re.ASCII)
#: Random bytes of a put's version token (hex in shard names).
_VERSION_BYTES = 8
#: How long each call of the cleanup after an interrupted put may take, when the client has
#: no timeout of its own (seconds).
_CLEANUP_TIMEOUT = 10.0
#: How many times a read starts again when the item was replaced under it.
_READ_ATTEMPTS = 8
#: Where a streamed put starts its next shard, by default: once the shard holds this many
#: bytes (batches are not split).
_STREAM_SHARD_BYTES = 256 * 2**20


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


def _version() -> str:
    """A fresh version token: the shards of each put are items of their own."""
    return secrets.token_hex(_VERSION_BYTES)


def _nbytes(column: Any) -> int:
    """The bytes of a column: an array's, or the sum of a ragged list's arrays."""
    if isinstance(column, list):
        return sum(int(getattr(a, "nbytes", 0)) for a in column)
    return int(column.nbytes)


def _shard_name(name: str, index: int, count: int, version: str) -> str:
    """The item that holds shard ``index`` of ``count`` of one version of ``name``."""
    return f"{name}.shard-{index}-of-{count}.v{version}"


def _part_name(name: str, index: int, version: str) -> str:
    """The item that holds part ``index`` of one version of ``name`` whose number of shards
    was not known when it was written (a streamed put's, a Ray Data write's)."""
    return f"{name}.part-{index}.v{version}"


def _check_name(name: Any, what: str, suffix: str = "") -> None:
    """Raises :class:`InvalidNameError` unless ``name`` is an item name the servers accept,
    is not reserved for shards, and leaves room for ``suffix`` (its shards' names)."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what}: an item name is a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise InvalidNameError(
            f"{what}: name {name!r}: use 1-{_MAX_NAME} letters, digits, '_', '-' or '.', "
            "not starting with '.'"
        )
    reserved = _RESERVED.search(name)
    if reserved is not None:
        raise InvalidNameError(
            f"{what}: name {name!r} is reserved: {reserved.group()!r} marks an item that holds "
            "a shard of a sharded item, which a put or delete under it would destroy"
        )
    if len(name) + len(suffix) > _MAX_NAME:
        raise InvalidNameError(
            f"{what}: name {name!r} is {len(name)} characters, and its shards' names add "
            f"{suffix!r} ({len(suffix)}): names are at most {_MAX_NAME} characters, so this "
            f"item's may have at most {_MAX_NAME - len(suffix)}"
        )


def _held(client: Client, name: str) -> tuple[bytes, str | None] | None:
    """What a server holds under ``name``: ``None`` for nothing, else the item's schema
    (IPC) and its map's JSON text (``None`` for an item that is not sharded)."""
    try:
        return _held_in(client._native.info(name))
    except RemoteNotFoundError:
        return None


def _held_in(info: dict[str, Any]) -> tuple[bytes, str | None]:
    """An item's schema (IPC) and its map's JSON text (``None`` for an item that is not
    sharded), from the native client's ``info``."""
    schema = pa.ipc.read_schema(pa.py_buffer(info["schema_ipc"]))
    text = (schema.metadata or {}).get(SHARDS_KEY.encode())
    return info["schema_ipc"], None if text is None else text.decode()


def _shard_map(info: dict[str, Any]) -> dict[str, Any] | None:
    """The map in an item's schema metadata; ``None`` for an item that is not sharded."""
    text = (info["schema"].metadata or {}).get(SHARDS_KEY.encode())
    return None if text is None else json.loads(text)


def _failure(location: str, error: BaseException) -> str:
    """One server's failure, for :func:`_unanswered`: its error, led by its location unless
    the error names it already."""
    text = str(error)
    return text if location in text else f"{location}: {text}"


def _unanswered(what: str, failures: Sequence[str]) -> ServerUnavailableError:
    return ServerUnavailableError(f"{what}: no server answered: " + "; ".join(failures))


def _no_replica(
    name: str, index: int, shard: dict[str, Any], failures: Sequence[str]
) -> ServerUnavailableError:
    start, end = shard["rows"]
    return ServerUnavailableError(
        f"shard {index} of {name!r} (rows [{start}, {end})): none of its "
        f"{len(shard['locations'])} replica(s) answered: " + "; ".join(failures)
    )


#: The errors after which a replica's next copy is tried: its server is down, did not
#: answer within the client's timeout (a stopped process, a host gone behind a live
#: address), or lost what it held in a restart (a version it no longer holds says it was
#: replaced).
_TRY_NEXT_REPLICA = (
    ServerUnavailableError,
    FlightTimeoutError,
    RemoteNotFoundError,
    ItemReplacedError,
)

#: The errors after which a read that any server answers asks the next one.
_TRY_NEXT_SERVER = (ServerUnavailableError, FlightTimeoutError)


def _given_up(errors: Sequence[FlightCallError], otherwise: FlightCallError) -> FlightCallError:
    """The error of a read that every server failed with ``errors``: the timeout when each
    ran out of time (still a ``TimeoutError``), else ``otherwise``."""
    if errors and all(isinstance(e, FlightTimeoutError) for e in errors):
        return errors[-1]
    return otherwise


def _read_again(error: FlightCallError) -> bool:
    """Whether a read that failed with ``error`` may succeed following a newer map: it
    wanted a shard (not found, or a version replaced: a LookupError too) or a server."""
    return isinstance(error, LookupError | ServerUnavailableError)


def _put_kind(
    name: str, data: Any, shards: Any, shard_bytes: Any, streamed: bool | None = None
) -> int | None:
    """Checks a put's options; the bytes at which a stream's shards end when ``data`` is a
    stream of batches (``streamed``, else as the blocking client tells), ``None`` for an
    item in memory."""
    _check_name(name, "put")
    if shards is not None and (
        isinstance(shards, bool) or not isinstance(shards, numbers.Integral) or shards < 1
    ):
        raise InvalidArgumentError(
            f"put {name!r}: shards={shards!r}: must be None (one shard per server) or an int >= 1"
        )
    if shard_bytes is not None and (
        isinstance(shard_bytes, bool)
        or not isinstance(shard_bytes, numbers.Integral)
        or shard_bytes < 1
    ):
        raise InvalidArgumentError(
            f"put {name!r}: shard_bytes={shard_bytes!r}: must be None (256 MiB) or an int >= 1"
        )
    if _streamed(data) if streamed is None else streamed:
        if shards is not None:
            raise InvalidArgumentError(
                f"put {name!r}: shards={shards!r} is for an item in memory; a stream's "
                "rows are not known in advance: give shard_bytes (the size at which a "
                "shard ends) instead"
            )
        return _STREAM_SHARD_BYTES if shard_bytes is None else int(shard_bytes)
    if shard_bytes is not None:
        raise InvalidArgumentError(
            f"put {name!r}: shard_bytes is for a stream of batches; an item in memory is "
            "split into shards=N"
        )
    return None


class _Plan:
    """Where the shards of a put of an item in memory go: ``shards`` (each ``name``,
    ``rows``, ``bytes``, ``locations``), and the columns each slices."""

    def __init__(
        self, name: str, data: Any, shards: int | None, locations: Sequence[str], replication: int
    ):
        self.form, self.names, self.arrays = _columns(data)
        if not self.arrays:
            raise ShapeError(f"put {name!r}: an item sharded by rows needs at least one column")
        _check_rows_axis(f"put {name!r}", self.names, self.arrays)
        lengths = {len(a) for a in self.arrays}
        if len(lengths) > 1:
            raise ShapeError(
                f"put {name!r}: sharded columns must share axis 0 (rows); got lengths "
                f"{sorted(lengths)}"
            )
        self.rows = lengths.pop() if lengths else 0
        bounds = shard_bounds(self.rows, len(locations) if shards is None else int(shards))
        self.arrays = [_whole_ragged(a, len(bounds)) for a in self.arrays]
        count, version = len(bounds), _version()
        _check_name(name, "put", _shard_name("", count - 1, count, version))
        n = len(locations)
        self.shards = [
            {
                "name": _shard_name(name, i, count, version),
                "rows": [start, end],
                "bytes": sum(_nbytes(a[start:end]) for a in self.arrays),
                "locations": [locations[(i + r) % n] for r in range(replication)],
            }
            for i, (start, end) in enumerate(bounds)
        ]

    def parts(self, shard: dict[str, Any]) -> list[Any]:
        """The columns' rows of ``shard``."""
        start, end = shard["rows"]
        return [a[start:end] for a in self.arrays]

    def shard_map(self) -> dict[str, Any]:
        return _shard_map_of(self.rows, self.shards)


def _shard_map_of(rows: int, shards: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": rows, "bytes": sum(s["bytes"] for s in shards), "shards": shards}


def _signature(names: Sequence[str], arrays: Sequence[Any]) -> list[str]:
    """What each column of a batch holds (its name, element type and the shape of a row), as
    the shards of one item must agree on."""
    out = []
    for name, column in zip(names, arrays, strict=True):
        if isinstance(column, list):
            first = column[0] if column else None
            kind = f"ragged {getattr(first, 'dtype', '?')}, ndim {getattr(first, 'ndim', '?')}"
        elif isinstance(column, pa.Array | pa.ChunkedArray):
            kind = str(column.type)
        else:
            kind = f"{getattr(column, 'dtype', type(column).__name__)} rows of shape "
            kind += str(tuple(getattr(column, "shape", ())[1:]))
        out.append(f"{name}: {kind}")
    return out


def _whole_ragged(column: Any, shards: int) -> Any:
    """A ragged column (a list of arrays) as one Arrow array when its elements' shapes differ
    and it is split into several shards: each shard then carries the whole list's
    ``uniform_shape``, so the shards' columns agree (sharded one by one, a shard whose
    elements happen to agree on a dimension would declare it uniform)."""
    if shards < 2 or not isinstance(column, list):
        return column
    if len({tuple(getattr(a, "shape", ())) for a in column}) < 2:
        return column
    from .. import to_arrow

    return to_arrow(column)


class _StreamedShards:
    """The shards of a streamed put, as its batches come (see :meth:`ClusterClient.put`)."""

    def __init__(self, name: str, locations: Sequence[str], replication: int):
        self.name, self.locations, self.replication = name, locations, replication
        self.version = _version()
        _check_name(name, "put", _part_name("", 10**6, self.version))
        self.done: list[dict[str, Any]] = []  # shards stored on every replica
        self.shard: dict[str, Any] | None = None  # the one being written
        self.rows = 0
        self.form: str | None = None
        self.columns: list[str] = []

    def check(
        self, index: int, batch_form: str, names: Sequence[str], arrays: Sequence[Any]
    ) -> None:
        """Raises :class:`ShapeError` unless batch ``index`` fits the stream: the same form
        and columns as the first (a later shard of other columns could not be read)."""
        _check_rows_axis(f"put {self.name!r}: batch {index}", names, arrays)
        signature = _signature(names, arrays)
        if self.form is None:
            self.form, self.columns = batch_form, signature
        elif batch_form != self.form:
            raise ShapeError(
                f"put {self.name!r}: batch {index} is a {batch_form}, the first was a {self.form}"
            )
        elif signature != self.columns:
            raise ShapeError(
                f"put {self.name!r}: batch {index}: its columns [{'; '.join(signature)}] differ "
                f"from the first batch's [{'; '.join(self.columns)}]"
            )
        if len({len(a) for a in arrays}) != 1:
            raise ShapeError(
                f"put {self.name!r}: batch {index}: sharded columns must share axis 0 "
                f"(rows); got lengths {sorted({len(a) for a in arrays})}"
            )

    def start(self) -> dict[str, Any]:
        """A new shard, after the ones done."""
        i, n = len(self.done), len(self.locations)
        self.shard = {
            "name": _part_name(self.name, i, self.version),
            "rows": [self.rows, self.rows],
            "bytes": 0,
            "locations": [self.locations[(i + r) % n] for r in range(self.replication)],
        }
        return self.shard

    def add(self, arrays: Sequence[Any]) -> None:
        """Counts a batch sent to the shard being written."""
        assert self.shard is not None
        self.rows += len(arrays[0])
        self.shard["rows"][1] = self.rows
        self.shard["bytes"] += sum(_nbytes(a) for a in arrays)

    def end(self) -> None:
        """The shard being written is stored on every replica."""
        assert self.shard is not None
        self.done.append(self.shard)
        self.shard = None

    def shard_map(self) -> dict[str, Any]:
        if not self.done:
            raise ShapeError(f"put {self.name!r}: the stream had no batches; nothing to store")
        return _shard_map_of(self.rows, self.done)

    def stored(self) -> dict[str, Any]:
        """Every shard stored, or partly: what an interrupted put deletes."""
        return {"shards": self.done + ([self.shard] if self.shard is not None else [])}


def _check_rows_axis(what: str, names: Sequence[str], arrays: Sequence[Any]) -> None:
    """Raises :class:`ShapeError` for a column with no rows to shard (a 0-d array)."""
    for column_name, column in zip(names, arrays, strict=True):
        if not isinstance(column, list) and getattr(column, "ndim", 1) == 0:
            raise ShapeError(
                f"{what}: column {column_name!r} is 0-d (a scalar): an item sharded by "
                "rows needs arrays of at least one dimension"
            )


def _replaced(
    before: Iterable[tuple[bytes, str | None] | Exception | None],
    shard_map: dict[str, Any],
    acknowledged: Iterable[str | None] = (),
) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """The shards of every map the servers held ``before`` a put of ``shard_map`` and of
    every map its publish replaced (``acknowledged``, as the servers said), and the (shard
    name, location) pairs among them that the new map uses."""
    texts = [held[1] for held in before if isinstance(held, tuple)]
    old = [
        shard
        for text in [*texts, *acknowledged]
        if text is not None
        for shard in json.loads(text)["shards"]
    ]
    keep = {(s["name"], loc) for s in shard_map["shards"] for loc in s["locations"]}
    return {"shards": old}, keep


def _brought_back(replies: Iterable[bytes | None]) -> dict[str, Any] | None:
    """The newest map the servers brought back undoing a failed put (``replies``: each
    server's answer to ``undo_map``), if any. Where an older put lost to the failed one on
    some servers and published on others, those others bring back its map and the rest an
    older one: the failed put publishes this one on every server, so that they agree."""
    maps = [
        json.loads(reply)["now"]
        for reply in replies
        if reply is not None and json.loads(reply).get("now") is not None
    ]
    return max(maps, key=lambda m: m["order"], default=None)


def _raced(shard_map: dict[str, Any], acknowledged: Iterable[str | None]) -> list[Any] | None:
    """The order of ``shard_map`` when the servers' acknowledgements of its publish named
    different maps replaced: puts of the name raced, and those that lost to others on some
    servers left what they replaced to the winner, which never saw it (see
    ``ClusterClient._delete_replaced``); else ``None``."""
    replaced = {None if a is None else json.dumps(json.loads(a).get("order")) for a in acknowledged}
    return shard_map["order"] if len(replaced) > 1 else None


def _ordered(
    shard_map: dict[str, Any], held: Iterable[tuple[bytes, str | None] | Exception | None]
) -> dict[str, Any]:
    """``shard_map`` with its place among the maps of its name: the time its put commits,
    then a fresh token. A server refuses a map older than the one it holds, so that however
    the publishes of two puts of one name interleave, every server keeps the newer map.

    The time is later than that of every map the servers ``held`` when the put began to
    commit (a Lamport clock): a put made after another's ends replaces it even from a
    machine whose clock is behind; clocks only order puts that overlap."""
    latest = max(
        (
            json.loads(h[1]).get("order", [0])[0]
            for h in held
            if isinstance(h, tuple) and h[1] is not None
        ),
        default=0,
    )
    return {**shard_map, "order": [max(time.time_ns(), latest + 1), _version()]}


def _map_order(name: str, order: list[Any]) -> bytes:
    """The body of the ``undo_map`` action (undo the failed put of ``order`` on ``name``) and
    of ``delete_map`` (delete ``name`` as of ``order``, unless a newer put's map is there)."""
    return json.dumps({"name": name, "order": order}).encode()


#: Errors in which a server answered a call with its status: what was asked did not happen
#: there (a publish that raised one left no map behind, and needs no undoing).
_ANSWERED = (
    AuthenticationError,
    RemoteInvalidError,
    RemoteNotFoundError,
    RemoteOutOfMemoryError,
    RemoteStorageError,
)


def _removed(reply: bytes) -> str | None:
    """The JSON of the map a ``delete_map`` removed (``None``: an unsharded item)."""
    removed = json.loads(reply).get("replaced")
    return None if removed is None else json.dumps(removed)


def _shard_pairs(shard_map: dict[str, Any], keep: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted({(s["name"], loc) for s in shard_map["shards"] for loc in s["locations"]} - keep)


def _old_shards_left(name: str, failures: Sequence[tuple[str, FlightCallError]]) -> None:
    if failures:
        # The put is done (committed); its leftovers are worth a word, not an error.
        warnings.warn(
            f"put {name!r}: stored, but shards of the version it replaced could not be "
            "deleted: " + "; ".join(text for text, _ in failures),
            RuntimeWarning,
            stacklevel=4,
        )


def _nothing_to_delete(
    name: str, locations: Sequence[str], found: Sequence[Any]
) -> FlightCallError | None:
    """The error of a delete of ``name`` when no server held it (``found``: each server's
    ``_held``, or the error it answered with)."""
    if any(isinstance(f, tuple) for f in found):
        return None
    down = [_failure(loc, f) for loc, f in zip(locations, found, strict=True) if f]
    if len(down) == len(locations):
        return _unanswered(f"delete {name!r}", down)
    return RemoteNotFoundError(f"delete {name!r}: no server holds an item {name!r}")


def _stored_distribution(
    kernel: str, name: str, info: dict[str, Any], shard_map: dict[str, Any], gather: bool, how: Any
) -> Any:
    """How ``kernel`` runs on the shards of ``name``: ``"whole"`` (one shard), ``"rows"``,
    a reduction, or ``"local"`` (``gather=True``: fetch the item); ``how(ndim)`` is the
    kernel's declared distribution."""
    shards = shard_map["shards"]
    if len(shards) == 1:
        return "whole"  # one shard is the whole item: any kernel runs on it as it is
    ndim = len(info["columns"][0].get("shape", [0])) if info["columns"] else 1
    dist = how(ndim)
    if dist == "local" and not gather:
        raise NotDistributableError(
            f"kernel {kernel!r} does not say how its results on the {len(shards)} "
            f"shards of {name!r} combine (its distribution is 'local'); pass "
            "gather=True to fetch the item and run it in one place"
        )
    return dist


def _combined(
    kernel: str, dist: Any, shards: Sequence[dict[str, Any]], partials: Sequence[tuple[Any, ...]]
) -> Any:
    """The result of ``kernel`` from its ``partials`` on each shard."""
    if dist == "whole":
        outputs = list(partials[0])
    elif dist == "rows":
        for shard, outputs in zip(shards, partials, strict=True):
            start, end = shard["rows"]
            of = f"{shard['name']!r} (rows [{start}, {end}))"
            check_rows(kernel, outputs, end - start, of)
        outputs = [np.concatenate(column) for column in zip(*partials, strict=True)]
    else:
        combine = COMBINE[dist["reduce"]]
        outputs = [functools.reduce(combine, column) for column in zip(*partials, strict=True)]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _check_locations(locations: Any, replication: Any) -> list[str]:
    if isinstance(locations, str):
        raise InvalidLocationError(
            f"locations={locations!r}: a cluster client takes a list of locations"
        )
    locations = list(locations)
    if not locations:
        raise InvalidArgumentError("a cluster client needs at least one server location")
    for i, location in enumerate(locations):
        if location in locations[:i]:
            raise InvalidLocationError(
                f"location {location!r} is listed twice: list each server once (replicas "
                "of a shard must be on distinct servers)"
            )
    if (
        isinstance(replication, bool)
        or not isinstance(replication, numbers.Integral)
        or not 1 <= replication <= len(locations)
    ):
        raise InvalidArgumentError(
            f"replication={replication!r}: must be an int between 1 and the "
            f"{len(locations)} server(s)"
        )
    return locations


class ClusterClient:
    """Reads and writes items sharded by rows over the Flight servers at ``locations``.

    Each item's rows are split into contiguous shards, each stored on ``replication``
    servers; every server stores the item's *map*, so any of them answers GetFlightInfo with
    one endpoint per shard listing every replica, and plain Flight clients can follow it.
    Reads and calls move to the next replica when a server does not answer.

    ``token`` is sent to the servers of ``locations`` only (a replica a map names elsewhere
    is read without it); ``shm`` is as in :func:`arrowbridge.connect`. ``timeout`` (seconds)
    bounds each call the client makes to one server (a shard's put, get or kernel call):
    past it that call raises :class:`FlightTimeoutError`. Ctrl+C interrupts the wait for a
    fan-out at once; calls already under way on worker threads end at their own timeout.
    """

    def __init__(
        self,
        locations: Sequence[str],
        *,
        token: str | None = None,
        replication: int = 1,
        shm: bool | None = None,
        timeout: float | None = None,
        on_map: Callable[[str, bytes | None, str | None], None] | None = None,
    ):
        locations = _check_locations(locations, replication)
        self.locations = locations
        self.replication = int(replication)
        self._token, self._shm, self._timeout = token, shm, timeout
        # The token goes to the cluster's own servers, which the endpoints of its maps name.
        self._clients = {
            loc: Client(loc, token=token, shm=shm, timeout=timeout, trusted=self.locations)
            for loc in self.locations
        }
        self._pool = ThreadPoolExecutor(max_workers=min(32, 4 * len(self.locations)))
        # The calls under way on the pool, which a cleanup after Ctrl+C waits for.
        self._running: set[Future[Any]] = set()
        self._lock = threading.Lock()
        # Told of every map put (name, schema, map) and delete (name, None, {"deleted": true,
        # "order": ...}): the control plane that reinstalls maps on restarted servers.
        self._on_map = on_map
        self._kernels: dict[str, dict[str, Any]] | None = None

    # -- helpers -------------------------------------------------------------------------

    def _client(self, location: str) -> Client:
        """The client of ``location``: one of the cluster's, or one made for a replica a map
        names elsewhere."""
        if location not in self._clients:
            # A location only a map names is not one the user sent the token to.
            self._clients[location] = Client(location, shm=self._shm, timeout=self._timeout)
        return self._clients[location]

    def _any(self, what: str, op: Callable[[Client], Any]) -> Any:
        """``op`` on the first server that answers it (a server that is down, or that lost
        what it held in a restart, is skipped)."""
        failures, errors = [], []
        missing = None
        for location, client in self._clients.items():
            try:
                return op(client)
            except _TRY_NEXT_SERVER as e:
                failures.append(_failure(location, e))
                errors.append(e)
            except RemoteNotFoundError as e:
                missing = e
        if missing is not None:
            raise missing
        raise _given_up(errors, _unanswered(what, failures))

    def _map(self, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        info = self._any(f"info of {name!r}", lambda c: c.info(name))
        return info, _shard_map(info)

    def _on_replicas(
        self, name: str, index: int, shard: dict[str, Any], op: Callable[[Client], Any]
    ) -> Any:
        """``op`` on the first replica of shard ``index`` that answers."""
        failures, errors = [], []
        for location in shard["locations"]:
            client = self._client(location)
            try:
                return op(client)
            except _TRY_NEXT_REPLICA as e:
                failures.append(_failure(location, e))
                errors.append(e)
        raise _given_up(errors, _no_replica(name, index, shard, failures))

    def _parallel(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Runs every job (each releases the GIL while data moves); all results, or the first
        error once every job has ended."""
        futures = [self._pool.submit(job) for job in jobs]
        with self._lock:
            self._running.update(futures)
        for future in futures:
            future.add_done_callback(self._finished)
        try:
            errors = [f.exception() for f in futures]
        except BaseException:
            # Interrupted (Ctrl+C): jobs not started yet never start.
            for future in futures:
                future.cancel()
            raise
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _finished(self, future: Future[Any]) -> None:
        with self._lock:
            self._running.discard(future)

    def _afterwards(self, error: BaseException, method: str, *args: Any) -> None:
        """Runs the cleanup of a put, the method ``method(*args, timeout)`` (``_discard``
        or ``_roll_back`` for one that did not commit, ``_delete_shards`` for the version one
        replaced): at once after an error; after an
        interruption (Ctrl+C), on a thread of its own once the calls still under way have
        ended, so that the interrupt is not held up by the servers."""

        def cleanup(timeout: float | None) -> None:
            getattr(self, method)(*args, timeout)

        if isinstance(error, Exception):
            cleanup(self._timeout)
            return
        with self._lock:
            running = list(self._running)
        # The calls still under way on the pool stop too (each raises), so that neither the
        # cleanup nor the interpreter's exit waits for a server that does not answer.
        for client in list(self._clients.values()):
            client._cancel()

        def later() -> None:
            wait(running)
            try:
                # Bounded, so that the interpreter's exit never waits on a silent server.
                cleanup(self._timeout or _CLEANUP_TIMEOUT)
            except (FlightCallError, RuntimeError, KeyboardInterrupt):
                pass  # the client was closed meanwhile, or a server is gone

        threading.Thread(target=later, name="arrowbridge-cluster-cleanup", daemon=True).start()

    # -- items ---------------------------------------------------------------------------

    def _servers(self) -> list[tuple[str, Client]]:
        """The cluster's servers (not the replicas a map names elsewhere), in order."""
        return [(location, self._clients[location]) for location in self.locations]

    def _read(self, name: str, read: Callable[[], Any]) -> Any:
        """``read()``, started again when it failed for want of a shard (or of a server) and
        the map of ``name`` changed meanwhile: a put replaced the item under it and deleted
        the shards it was reading. Each attempt follows one map, so it reads one version
        whole."""
        seen: dict[str, Any] | None = None
        error: Exception | None = None
        for _ in range(_READ_ATTEMPTS):
            try:
                return read()
            except FlightCallError as e:
                if not _read_again(e):
                    raise
                error = e
            try:
                _, now = self._map(name)
            except (RemoteNotFoundError, ServerUnavailableError):
                raise error from None
            if now is None or now == seen:
                raise error
            seen = now
        assert error is not None
        raise error

    def put(
        self,
        name: str,
        data: Any,
        *,
        shards: int | None = None,
        shard_bytes: int | None = None,
    ) -> None:
        """Stores ``data`` (an array, a dict of arrays sharing axis 0, or a table) under
        ``name``, its rows split into ``shards`` contiguous shards (default: one per server;
        never more than the rows), shard ``i`` on servers ``i, i+1, ...`` (``replication``
        of them). Returns once every shard and replica, and the map on every server, is
        acknowledged; every server must answer.

        ``data`` may also be a stream of batches, as :meth:`arrowbridge.Client.put` takes
        (a generator of arrays or dicts, a ``pyarrow.RecordBatchReader``, anything with
        ``__arrow_c_stream__``, :func:`arrowbridge.iter_ipc`'s batches): it is sharded as
        it comes, with constant memory. Each batch goes to every replica of the shard being
        written, and the next batch starts a new shard, on the next servers, once that one
        holds ``shard_bytes`` (default 256 MiB; batches are not split, so a shard holds
        whole batches). The shards are named ``name.part-<i>.v<token>``; the rest, the
        atomic commit included, is as for an item in memory. ``shards`` is for items in
        memory, ``shard_bytes`` for streams.

        >>> import numpy as np, arrowbridge
        >>> from arrowbridge.cluster import ClusterClient
        >>> servers = [arrowbridge.serve() for _ in range(2)]
        >>> client = ClusterClient([s.location for s in servers])
        >>> client.put("s", (np.full(4, i) for i in range(3)), shard_bytes=64)
        >>> [s["rows"] for s in client.shards("s")], client.get("s").tolist()
        ([[0, 8], [8, 12]], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        >>> client.close(); [s.shutdown() for s in servers] and None

        The put is atomic. Each put stores its shards as items of their own,
        ``name.shard-<i>-of-<n>.v<token>`` with a fresh random token, so nothing a reader
        may be following is overwritten. Then it publishes the map on every server: the
        commit point. Then it deletes the previous version's shards. Readers see the old
        version or the new, never a mix of the two: a read follows one map, whose shards
        never change. While the map is published, servers may briefly differ (some still
        describe the old version, whole); a :meth:`get` or :meth:`call` whose old shards
        were deleted under it reads again, following the new map.

        A put that fails (a shard on any replica, or the map on any server) raises its
        error after undoing its map on every server that may have taken it (each brings back
        the map the new one replaced there, or nothing for a new item; the newest of those
        is then published on every server, so that they agree) and deleting every shard it
        stored: the previous version reads exactly as before. Should a server that
        may hold the new map not be reached, the new shards are kept (the error's note names
        the server), so that no server holds a map of missing shards. An item that is not
        sharded (put on one server directly) is replaced by the map, and not put back.
        Concurrent puts of one name (from several clients, or tasks) are ordered by when
        they commit: every server ends with the newest map, and each put returns, the older
        replaced at once. Rarely (three puts racing, or a failure among racing puts), shards
        no map names are left behind (items named ``name.shard-*.v<token>``; ``list`` shows
        them, and a plain client of their server deletes them:
        ``arrowbridge.connect(location).delete(shard)``).

        The shards of a put that failed or was interrupted are deleted; a server remembers
        the shards it was asked to delete (for ten minutes, the last 65,536), so that a
        shard's put cut off after its data was sent, landing after the cleanup, is refused.

        ``name`` must be a valid item name (1-200 letters, digits, ``_``, ``-`` or ``.``,
        not starting with ``.``) with room left for its shards' suffix, and not contain a
        shard's marker (``.shard-<i>-of-<n>``, ``.part-<i>``), else
        :class:`~arrowbridge.errors.InvalidNameError`.

        >>> import numpy as np, arrowbridge
        >>> from arrowbridge.cluster import ClusterClient
        >>> servers = [arrowbridge.serve() for _ in range(3)]
        >>> client = ClusterClient([s.location for s in servers], replication=2)
        >>> client.put("x", np.arange(6), shards=3)
        >>> [len(s["locations"]) for s in client.shards("x")]
        [2, 2, 2]
        >>> client.shards("x")[0]["name"]
        'x.shard-0-of-3.v...'
        >>> client.close(); [s.shutdown() for s in servers] and None
        """
        stream_shard_bytes = _put_kind(name, data, shards, shard_bytes)
        if stream_shard_bytes is not None:
            self._put_stream(name, data, stream_shard_bytes)
            return
        plan = _Plan(name, data, shards, self.locations, self.replication)

        def put_shard(shard: dict[str, Any], location: str) -> None:
            self._client(location)._native.put(
                shard["name"], plan.names, plan.parts(shard), plan.form
            )

        try:
            self._parallel(
                [
                    functools.partial(put_shard, shard, location)
                    for shard in plan.shards
                    for location in shard["locations"]
                ]
            )
            first = plan.shards[0]
            schema_ipc = self._client(first["locations"][0])._native.info(first["name"])[
                "schema_ipc"
            ]
        except BaseException as error:
            # Nothing refers to these shards yet: the previous version is untouched.
            stored = {"shards": plan.shards}
            self._afterwards(error, "_discard", stored)
            raise
        self._commit(name, schema_ipc, plan.shard_map())

    def _put_stream(self, name: str, data: Any, shard_bytes: int) -> None:
        """A put of a stream of batches, sharded as they come (see :meth:`put`)."""
        stream = _StreamedShards(name, self.locations, self.replication)
        puts: list[Any] = []  # the puts of the shard being written, one per replica

        def finish(put: Any) -> None:
            put.finish(timeout=self._timeout)

        try:
            for index, (batch_form, names, arrays) in enumerate(_batches(data)):
                stream.check(index, batch_form, names, arrays)
                if stream.shard is None:
                    shard = stream.start()
                    puts = [
                        self._client(location)._native.put_stream(shard["name"], batch_form)
                        for location in shard["locations"]
                    ]
                # Each send returns once its batch is written: replicas are written at once.
                if len(puts) == 1:
                    puts[0].send(names, arrays, timeout=self._timeout)
                else:
                    self._parallel(
                        [
                            functools.partial(put.send, names, arrays, timeout=self._timeout)
                            for put in puts
                        ]
                    )
                stream.add(arrays)
                if stream.shard is not None and stream.shard["bytes"] >= shard_bytes:
                    self._parallel([functools.partial(finish, put) for put in puts])
                    stream.end()
                    puts = []
            if stream.shard is not None:
                self._parallel([functools.partial(finish, put) for put in puts])
                stream.end()
                puts = []
            shard_map = stream.shard_map()
            first = shard_map["shards"][0]
            schema_ipc = self._client(first["locations"][0])._native.info(first["name"])[
                "schema_ipc"
            ]
        except BaseException as error:
            for put in puts:
                put.abort()  # the shard under way: its servers store nothing
            stored = stream.stored()
            self._afterwards(error, "_discard", stored)
            raise
        self._commit(name, schema_ipc, shard_map)

    def _commit(self, name: str, schema_ipc: bytes, shard_map: dict[str, Any]) -> None:
        """Publishes the map of ``name``, whose shards are stored, on every server and tells
        the control plane: the commit point of a put. Then deletes the shards of the version
        it replaced (of every map a server held, or said this publish replaced) that it
        does not reuse.

        Puts of one name by several clients at once are ordered by the time they commit:
        a server refuses a map older than its own, so every server ends with the newest.
        A put whose map a newer put's beat on some server leaves the rest to that put
        (which deletes what it replaced); one that stored its map nowhere deletes its
        shards.

        When it fails, every server that may have taken the new map undoes it (where the
        new map is still there, the server brings back the map it replaced), the new shards
        are deleted (see :meth:`put`), and the error is raised."""
        servers = self._servers()
        try:
            before = dict(
                zip(
                    self.locations,
                    self._parallel([functools.partial(_held, c, name) for _, c in servers]),
                    strict=True,
                )
            )
        except BaseException as error:
            self._afterwards(error, "_discard", shard_map)
            raise
        shard_map = _ordered(shard_map, before.values())
        map_json = json.dumps(shard_map)
        published: dict[str, str | None] = {}  # location: the map ours replaced there
        superseded: set[str] = set()
        refused: set[str] = set()  # publishes a server answered with an error
        lock = threading.Lock()

        def publish(location: str, client: Client) -> None:
            try:
                replaced = client._native.put_map(name, schema_ipc, map_json)
            except ItemReplacedError:
                with lock:
                    superseded.add(location)  # a newer put's map is there, and stays
                return
            except _ANSWERED:
                with lock:
                    refused.add(location)
                raise
            with lock:
                published[location] = replaced

        try:
            self._parallel([functools.partial(publish, loc, c) for loc, c in servers])
            if self._on_map is not None and not superseded:
                self._on_map(name, schema_ipc, map_json)
        except BaseException as error:
            self._afterwards(error, "_roll_back", name, refused | superseded, shard_map, error)
            raise
        if superseded:
            if not published:
                self._after_commit(self._discard, shard_map)  # stored nowhere: never read
            return
        old, keep = _replaced(before.values(), shard_map, published.values())
        raced = _raced(shard_map, published.values())
        _old_shards_left(name, self._after_commit(self._delete_replaced, name, old, keep, raced))

    def _delete_replaced(
        self,
        name: str,
        old: dict[str, Any],
        keep: set[tuple[str, str]],
        raced: list[Any] | None,
        timeout: float | None = None,
    ) -> list[tuple[str, FlightCallError]]:
        """Deletes the shards of the versions a put that committed everywhere replaced
        (``old``, but those in ``keep``). When puts of the name ``raced`` (the put's order),
        also those of every older map the servers keep to undo failed puts (the
        ``maps_below`` action): one that a put which lost on some servers replaced on others
        is named by no server's map now, and none of them can come back once this put's map
        is on every server."""
        if raced is not None:
            body = _map_order(name, raced)

            def below(client: Client) -> list[dict[str, Any]]:
                try:
                    reply = client._native.action("maps_below", body, timeout=timeout)
                except FlightCallError:
                    return []  # their shards stay: list shows them
                return json.loads(reply)["maps"]

            maps = self._parallel([functools.partial(below, c) for _, c in self._servers()])
            old = {
                "shards": old["shards"] + [s for found in maps for m in found for s in m["shards"]]
            }
        return self._delete_shards(old, keep, timeout)

    def _after_commit(self, method: Callable[..., Any], *args: Any) -> Any:
        """``method(*args)``: the deletes that follow a put's commit. When Ctrl+C stops
        them, they go on in the background (see :meth:`_afterwards`): the put is done, and
        what it replaced must not stay behind."""
        try:
            return method(*args)
        except BaseException as error:
            if not isinstance(error, Exception):
                self._afterwards(error, method.__name__, *args)
            raise

    def _roll_back(
        self,
        name: str,
        refused: set[str],
        shard_map: dict[str, Any],
        error: BaseException,
        timeout: float | None = None,
    ) -> None:
        """After a failed publish: asks every server that may hold the new map to undo it
        (the ``undo_map`` action: where the new map is still there, the server brings back
        the map it replaced, which only the server knows for sure: a put whose publish was
        cut off knows neither whether its map arrived nor what it replaced; and the server
        refuses the new map should it arrive later), then publishes the newest map they
        brought back on every server (see :func:`_brought_back`) and deletes the new shards,
        unless a server could not be asked: its map, if it arrived, keeps its shards."""
        body = _map_order(name, shard_map["order"])

        def undo(location: str) -> tuple[str | None, bytes | None]:
            if location in refused:
                return None, None  # the server answered the publish: no map of ours there
            try:
                reply = self._clients[location]._native.action("undo_map", body, timeout=timeout)
            except FlightCallError as e:
                return f"{location}: {e}", None
            return None, reply

        outcomes = self._parallel([functools.partial(undo, loc) for loc in self.locations])
        stuck = [failure for failure, _ in outcomes if failure]
        newest = _brought_back([reply for _, reply in outcomes])
        if newest is not None:
            self._roll_forward(name, newest, timeout)
        if not stuck:
            self._discard(shard_map, timeout)
        elif hasattr(error, "add_note"):
            error.add_note(
                f"put {name!r}: the new map may stay on server(s) that could not undo it "
                f"({'; '.join(stuck)}), so its shards were kept"
            )

    def _roll_forward(self, name: str, newest: dict[str, Any], timeout: float | None) -> None:
        """Publishes ``newest`` (see :func:`_brought_back`) on every server: those that hold
        a newer map, or saw its put undone, refuse it; best-effort."""
        try:
            schema = self._map_schema(newest, timeout)
        except FlightCallError:
            return  # its shards are gone: the servers keep what they brought back
        text = json.dumps(newest)

        def publish(client: Client) -> None:
            try:
                client._native.put_map(name, schema, text, timeout=timeout)
            except FlightCallError:
                pass  # a newer map is there, or the server is gone

        self._parallel([functools.partial(publish, c) for _, c in self._servers()])

    def _map_schema(self, shard_map: dict[str, Any], timeout: float | None) -> bytes:
        """The schema (IPC) of the item a map describes: its first shard's, from a replica."""
        first = shard_map["shards"][0]
        errors: list[str] = []
        for location in first["locations"]:
            try:
                return self._client(location)._native.info(first["name"], timeout=timeout)[
                    "schema_ipc"
                ]
            except FlightCallError as e:
                errors.append(_failure(location, e))
        raise _unanswered(f"the schema of {first['name']!r}", errors)

    def _discard(self, shard_map: dict[str, Any], timeout: float | None = None) -> None:
        """Deletes the shards of a put that did not commit. A shard not found there yet
        (its put cut off after its data was sent) is refused when it lands: its server
        remembers the delete."""
        self._delete_shards(shard_map, set(), timeout)

    def _delete_shards(
        self,
        shard_map: dict[str, Any],
        keep: set[tuple[str, str]],
        timeout: float | None = None,
    ) -> list[tuple[str, FlightCallError]]:
        """Deletes every replica of the shards of ``shard_map`` but those in ``keep`` (shard
        name, location); best-effort: a shard already gone (or not landed yet: it will be
        refused), or whose server is down, is skipped. Returns what else failed: a line
        saying which, and the error."""

        def delete(shard_name: str, location: str) -> tuple[str, FlightCallError] | None:
            try:
                self._client(location).delete(shard_name, timeout=timeout)
            except RemoteNotFoundError:
                pass  # gone, or refused when it lands
            except ServerUnavailableError:
                pass  # gone with its server
            except FlightCallError as e:
                return f"{shard_name!r} on {location}: {e}", e
            return None

        failures = self._parallel(
            [functools.partial(delete, *pair) for pair in _shard_pairs(shard_map, keep)]
        )
        return [f for f in failures if f is not None]

    def get(
        self,
        name: str,
        *,
        columns: Iterable[str] | None = None,
        rows: tuple[int, int] | None = None,
    ) -> Any:
        """The item ``name`` in the form it was put, its shards fetched in parallel into one
        contiguous array per column (from the next replica where a server does not
        answer). One version of it, whole, even while a put replaces it (see :meth:`put`).
        ``columns`` and ``rows`` select a part, as :meth:`arrowbridge.Client.get`'s do: only
        the shards that hold those rows are read.

        >>> import numpy as np, arrowbridge
        >>> from arrowbridge.cluster import ClusterClient
        >>> with arrowbridge.serve() as a, arrowbridge.serve() as b:
        ...     with ClusterClient([a.location, b.location]) as cluster:
        ...         cluster.put("x", np.arange(6), shards=2)
        ...         cluster.get("x", rows=(2, 5)).tolist()
        [2, 3, 4]
        """
        return self._read(
            name,
            lambda: self._any(f"get {name!r}", lambda c: c.get(name, columns=columns, rows=rows)),
        )

    def stream(self, name: str, **options: Any) -> Any:
        """The item ``name`` as an iterator of batches of its rows, shard by shard in row
        order, each batch within one shard (see :meth:`arrowbridge.Client.stream` for
        ``columns``, ``rows``, ``batch_rows`` and ``timeout``). The item's map is read from
        the first server that answers; each shard from its replicas in turn. The stream
        reads one version: when a put replaces the item before its first batch arrives, it
        starts again on the new version (as :meth:`get` does); once rows were read, the
        next batch raises :class:`~arrowbridge.errors.ItemReplacedError` instead.

        >>> import numpy as np, arrowbridge
        >>> from arrowbridge.cluster import ClusterClient
        >>> with arrowbridge.serve() as a, arrowbridge.serve() as b:
        ...     with ClusterClient([a.location, b.location]) as cluster:
        ...         cluster.put("x", np.arange(6), shards=2)
        ...         [batch.tolist() for batch in cluster.stream("x", batch_rows=2)]
        [[0, 1], [2], [3, 4], [5]]
        """

        def start() -> Any:
            return self._any(f"stream {name!r}", lambda c: c.stream(name, **options))._started()

        return self._read(name, start)

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
        """Deletes ``name``: its map from every server, then the shards of every map a
        server held from every replica. A name reserved for shards is refused
        (:class:`~arrowbridge.errors.InvalidNameError`)."""
        _check_name(name, "delete")
        servers = self._servers()

        def look(client: Client) -> tuple[bytes, str | None] | Exception | None:
            try:
                return _held(client, name)
            except ServerUnavailableError as e:
                return e

        with _as_part_of(f"delete {name!r}"):
            found = self._parallel([functools.partial(look, c) for _, c in servers])
        missing = _nothing_to_delete(name, self.locations, found)
        if missing is not None:
            raise missing
        # Ordered as a put is: a put this delete overtakes cannot bring the item back on
        # some servers, and a newer one stays everywhere.
        tombstone = json.dumps(_ordered({"deleted": True}, found))
        body = _map_order(name, json.loads(tombstone)["order"])

        def delete_map(client: Client) -> str | None:
            try:
                return _removed(client._native.action("delete_map", body))
            except (RemoteNotFoundError, ServerUnavailableError, ItemReplacedError):
                return None  # not there, down (the control plane forgets it too), or newer

        removed = self._parallel([functools.partial(delete_map, c) for _, c in servers])
        shards, _ = _replaced(found, {"shards": []}, removed)
        failures = self._delete_shards(shards, set())
        if self._on_map is not None:
            self._on_map(name, None, tombstone)
        if failures:
            raise failures[0][1]  # the map is gone everywhere; a shard is left

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
        return kernel_distribution(self.kernels(), kernel, ndim, params)

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
        rest = [self.get(a.name) if isinstance(a, Stored) else a for a in args[1:]]
        return self._read(name, lambda: self._call_stored(kernel, name, rest, gather, params))

    def _call_stored(
        self, kernel: str, name: str, rest: Sequence[Any], gather: bool, params: dict[str, Any]
    ) -> Any:
        """:meth:`call` of ``kernel`` on the stored item ``name``, following its map once."""
        info, shard_map = self._map(name)
        if shard_map is None:
            return self._any(
                f"call {kernel!r}", lambda c: c.call(kernel, Stored(name), *rest, **params)
            )
        shards = shard_map["shards"]
        dist = _stored_distribution(
            kernel,
            name,
            info,
            shard_map,
            gather,
            lambda ndim: self._distribution(kernel, ndim, params),
        )
        if dist == "local":
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
        return _combined(kernel, dist, shards, partials)

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
