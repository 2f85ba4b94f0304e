"""The Flight client for asyncio: the native client's calls as awaitables.

Each call runs as a task on the client's own Rust runtime (one thread per client, not per
call) and hands its result to the event loop when it is done: the loop never blocks on I/O,
and a thousand calls under way cost a thousand small tasks, not a thousand threads.
Cancelling the awaiting task (``task.cancel()``, ``asyncio.wait_for``, a ``TaskGroup``
that fails) cancels the RPC: its streams are reset and the server sees it.

>>> import asyncio, numpy as np, arrowbridge
>>> from arrowbridge import aio
>>> async def main(location):
...     async with aio.connect(location) as client:
...         await client.put("x", np.arange(6.0).reshape(2, 3))
...         return await client.call("sum", client.stored("x"), axis=1)
>>> with arrowbridge.serve() as server:
...     asyncio.run(main(server.location))
array([ 3., 12.])
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from . import _native
from .errors import FlightCallError, ShapeError, _as_part_of
from .flight.client import (
    Stored,
    _arg,
    _batches,
    _check_batch_rows,
    _columns,
    _Connected,
    _describe,
    _names,
    _no_ragged_rows,
    _one_array,
    _rank,
    _raw_batches,
    _Results,
    _rows,
    _stored_calls,
    _stream_source,
    _streamed,
)

#: Outcomes settled per wake-up of the loop, and seconds of calls started per turn of it: the
#: longest the client holds the loop up at once is about their sum.
_DRAIN = 32
_BURST = 0.0005


class _Queued:
    """A call waiting for a later turn of the loop to start."""

    __slots__ = ("future", "pending", "start", "token")

    def __init__(self, start: Callable[[Any], Any], token: int, future: asyncio.Future[Any]):
        self.start = start
        self.token = token
        self.future = future
        self.pending: Any = None


class _Calls:
    """The calls of one client under way in one event loop: each native call queues its
    outcome (with its token) in ``native``, whose descriptor the loop watches; a wake-up
    drains the outcomes queued so far and settles their futures.

    Calls started in one turn of the loop run back to back (``asyncio.gather`` of a
    thousand calls): past ``_BURST`` seconds of starting them, the rest queue up and later
    turns start them, ``_BURST`` seconds' worth each, so that the loop's other work is not
    held up for long. A queued call's task is not woken to start it: it awaits its outcome
    only."""

    def __init__(self) -> None:
        self.native = _native.Completions()
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self.tokens = itertools.count()
        self.loop: asyncio.AbstractEventLoop | None = None
        #: When the calls started in this turn of the loop began (None: none yet).
        self.burst: float | None = None
        #: Calls waiting for a later turn to start, and whether one is due to start some.
        self.waiting: collections.deque[_Queued] = collections.deque()
        self.admitting = False
        self.closed = False

    def _end_burst(self) -> None:
        self.burst = None

    def _admit(self) -> None:
        until = time.perf_counter() + _BURST
        while self.waiting and time.perf_counter() < until:
            queued = self.waiting.popleft()
            if queued.future.done():  # cancelled while it waited
                continue
            try:
                queued.pending = queued.start((self.native, queued.token))
            except Exception as error:
                self.futures.pop(queued.token, None)
                queued.future.set_exception(error)
        if self.waiting and self.loop is not None:
            self.loop.call_soon(self._admit)
        else:
            self.admitting = False

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.closed:
            raise FlightCallError("the client is closed")
        if self.loop is loop:
            return
        old = self.loop
        if old is not None and not old.is_closed():
            # A loop that may run again keeps its calls: another may take over only once
            # it has none under way (or is closed, its calls gone with it).
            if old.is_running() or self.futures or self.waiting:
                raise FlightCallError(
                    "this AsyncClient serves the event loop it was first used in, which has "
                    "calls under way; connect another client in this loop (or close that one)"
                )
            old.remove_reader(self.native.fd)
        loop.add_reader(self.native.fd, self._drain)
        self.loop = loop
        # What a closed loop left: calls whose futures it can no longer settle (their
        # outcomes, when they come, are dropped), and calls that never started.
        self.futures.clear()
        self.waiting.clear()
        self.admitting = False
        self.burst = None

    def _drain(self) -> None:
        for token, value, error in self.native.drain(_DRAIN):
            future = self.futures.pop(token, None)
            if future is None or future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    def start(self, start: Callable[[Any], Any]) -> asyncio.Future[Any]:
        """Starts a native call; the future of its outcome (cancelling the future does not
        cancel the call)."""
        loop = asyncio.get_running_loop()
        self._watch(loop)
        token = next(self.tokens)
        future = loop.create_future()
        self.futures[token] = future
        try:
            start((self.native, token))
        except BaseException:
            del self.futures[token]
            raise
        return future

    async def run(self, start: Callable[[Any], Any]) -> Any:
        """Starts a native call with ``(completions, token)`` (now, or in a later turn of
        the loop: see the class); awaits its outcome, and cancels the call if the awaiting
        task is cancelled."""
        loop = asyncio.get_running_loop()
        self._watch(loop)
        token = next(self.tokens)
        future = loop.create_future()
        self.futures[token] = future
        queued = None
        if self.waiting or (self.burst is not None and time.perf_counter() - self.burst > _BURST):
            queued = _Queued(start, token, future)
            self.waiting.append(queued)
            if not self.admitting:
                self.admitting = True
                loop.call_soon(self._admit)
            pending = None
        else:
            if self.burst is None:
                self.burst = time.perf_counter()
                loop.call_soon(self._end_burst)
            try:
                pending = start((self.native, token))
            except BaseException:
                del self.futures[token]
                raise
        try:
            return await future
        except asyncio.CancelledError:
            if queued is not None:
                pending = queued.pending
            if pending is not None:
                pending.cancel()
            self.futures.pop(token, None)
            raise

    def close(self) -> None:
        self.closed = True
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.native.fd)
        self.loop = None
        # The calls under way end with the client: their awaiting tasks are told so.
        for queued in self.waiting:
            if not queued.future.done():
                queued.future.set_exception(
                    FlightCallError("the client was closed before the call began")
                )
        self.waiting.clear()
        for future in self.futures.values():
            if not future.done():
                future.set_exception(FlightCallError("the client was closed during the call"))
        self.futures.clear()


def _form(form: str, arrays: dict[str, Any]) -> Any:
    return next(iter(arrays.values())) if form == "array" else arrays


class AsyncItemStream:
    """The batches of a stored item as they arrive, from :meth:`AsyncClient.stream`, for
    ``async for``: each an array or a dict of arrays, as :class:`arrowbridge.ItemStream`'s
    are; ``rows`` is the number of rows it carries in all."""

    def __init__(self, native: Any, calls: _Calls):
        self._native = native
        self._calls = calls
        self._next: asyncio.Future[Any] | None = None
        self._form: str = native.form
        self._ahead: list[Any] = []
        self.rows: int = native.rows

    def __aiter__(self) -> AsyncItemStream:
        return self

    async def __anext__(self) -> Any:
        if self._ahead:
            return self._ahead.pop()
        # A task cancelled while it waits for a batch leaves the fetch going: the next
        # __anext__ gets that batch (no rows are skipped).
        if self._next is None:
            self._next = self._calls.start(self._native.submit_next)
        arrays = await asyncio.shield(self._next)
        self._next = None
        if arrays is None:
            raise StopAsyncIteration
        return _form(self._form, arrays)

    def close(self) -> None:
        """Stops the stream (batches fetched ahead are dropped); idempotent."""
        self._native.close()

    async def _started(self) -> AsyncItemStream:
        """This stream, its first batch fetched (see :meth:`arrowbridge.ItemStream._started`)."""
        try:
            self._ahead.append(await self.__anext__())
        except StopAsyncIteration:
            pass
        except BaseException:
            self.close()
            raise
        return self

    async def __aenter__(self) -> AsyncItemStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrowbridge.aio.AsyncItemStream of {self.rows} rows>"


class AsyncClient(_Connected):
    """A Flight client for asyncio (see :func:`connect`): the calls of
    :class:`arrowbridge.Client`, awaited. Data moves over gRPC (shared memory is for the
    blocking client); ``timeout=`` bounds each call as there, raising
    :class:`FlightTimeoutError`.

    >>> import asyncio, numpy as np, arrowbridge
    >>> from arrowbridge import aio
    >>> async def main(location):
    ...     async with aio.connect(location) as client:
    ...         await asyncio.gather(*(client.put(f"x{i}", np.full(3, i)) for i in range(3)))
    ...         items = await client.list()
    ...         return [item["name"] for item in items], await client.get("x2")
    >>> with arrowbridge.serve() as server:
    ...     asyncio.run(main(server.location))
    (['x0', 'x1', 'x2'], array([2, 2, 2]))
    """

    def __init__(
        self,
        location: str,
        *,
        token: str | None = None,
        tls_root_certs: bytes | None = None,
        timeout: float | None = None,
        trusted: Sequence[str] = (),
    ):
        self._connect(
            location,
            token=token,
            tls_root_certs=tls_root_certs,
            shm=False,
            timeout=timeout,
            trusted=list(trusted),
            background=True,
        )
        self._calls = _Calls()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        # The parent's queue and descriptor are the parent's: the child gets its own.
        self._calls = _Calls()

    async def put(self, name: str, data: Any, *, timeout: float | None = None) -> None:
        """Stores ``data`` under ``name``, as :meth:`arrowbridge.Client.put` does; ``data``
        may also be an async iterable of batches (``async for`` over it), besides the
        iterators and Arrow streams the blocking client takes. A stream is sent batch by
        batch with constant memory and stored as one version when it ends; if it raises or
        the call is cancelled, nothing is stored.

        >>> import asyncio, numpy as np, arrowbridge
        >>> from arrowbridge import aio
        >>> async def rows():
        ...     for i in range(3):
        ...         yield {"i": np.full(2, i)}
        >>> async def main(location):
        ...     async with aio.connect(location) as client:
        ...         await client.put("s", rows())
        ...         return await client.get("s")
        >>> with arrowbridge.serve() as server:
        ...     asyncio.run(main(server.location))
        {'i': array([0, 0, 1, 1, 2, 2])}
        """
        if isinstance(data, AsyncIterable):
            await self._put_stream(name, _async_batches(data), timeout)
        elif _streamed(data):
            await self._put_stream(name, _to_async(_batches(data)), timeout)
        else:
            form, names, arrays = _columns(data)
            await self._put_columns(name, names, arrays, form, timeout)

    async def _put_stream(
        self, name: str, batches: AsyncIterator[tuple[str, list[str], list[Any]]], timeout: Any
    ) -> None:
        try:
            form, names, arrays = await anext(batches)
        except StopAsyncIteration:
            raise ShapeError(f"put {name!r}: the stream had no batches; nothing to store") from None
        put = self._native.put_stream(name, form)
        try:
            index = 0
            while True:
                await self._send(put, names, arrays, timeout)
                try:
                    batch_form, names, arrays = await anext(batches)
                except StopAsyncIteration:
                    break
                index += 1
                if batch_form != form:
                    raise ShapeError(
                        f"put {name!r}: batch {index} is a {batch_form}, the first was a {form}"
                    )
            await self._finish(put, timeout)
        except BaseException:
            put.abort()
            raise

    # -- for arrowbridge.cluster.aio: a shard's put, a map, an item's raw info ---------

    async def _put_columns(
        self, name: str, names: list[str], arrays: list[Any], form: str, timeout: Any = None
    ) -> None:
        await self._calls.run(
            lambda done: self._native.submit_put(name, names, arrays, form, done, timeout=timeout)
        )

    async def _send(self, put: Any, names: list[str], arrays: list[Any], timeout: Any) -> None:
        await self._calls.run(functools.partial(put.submit_send, names, arrays, timeout=timeout))

    async def _finish(self, put: Any, timeout: Any) -> None:
        await self._calls.run(lambda done: put.submit_finish(done, timeout=timeout))

    async def _put_map(
        self, name: str, schema_ipc: bytes, map_json: str, timeout: Any = None
    ) -> str | None:
        return await self._calls.run(
            lambda done: self._native.submit_put_map(
                name, schema_ipc, map_json, done, timeout=timeout
            )
        )

    async def _info_raw(self, name: str, timeout: Any = None) -> dict[str, Any]:
        infos = await self._calls.run(
            lambda done: self._native.submit_info(name, done, timeout=timeout)
        )
        return infos[0]

    async def get(
        self,
        name: str,
        *,
        columns: Sequence[str] | None = None,
        rows: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """What was put under ``name`` (or its ``rows`` and ``columns``), as
        :meth:`arrowbridge.Client.get` returns it."""
        selected = None if columns is None else _names("columns", columns)
        form, arrays = await self._calls.run(
            lambda done: self._native.submit_get(
                name, done, columns=selected, rows=_rows(rows), timeout=timeout
            )
        )
        return _form(form, arrays)

    async def stream(
        self,
        name: str,
        *,
        columns: Sequence[str] | None = None,
        rows: tuple[int, int] | None = None,
        batch_rows: int | None = None,
        timeout: float | None = None,
    ) -> AsyncItemStream:
        """The item ``name`` as batches of its rows, for ``async for`` (see
        :meth:`arrowbridge.Client.stream`).

        >>> import asyncio, numpy as np, arrowbridge
        >>> from arrowbridge import aio
        >>> async def main(location):
        ...     async with aio.connect(location) as client:
        ...         await client.put("x", np.arange(5))
        ...         return [b.tolist() async for b in await client.stream("x", batch_rows=2)]
        >>> with arrowbridge.serve() as server:
        ...     asyncio.run(main(server.location))
        [[0, 1], [2, 3], [4]]
        """
        selected = None if columns is None else _names("columns", columns)
        if batch_rows is not None and (
            not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1
        ):
            raise ShapeError(f"stream {name!r}: batch_rows must be an int >= 1, got {batch_rows!r}")
        native = await self._calls.run(
            lambda done: self._native.submit_stream(
                name,
                done,
                columns=selected,
                rows=_rows(rows),
                batch_rows=batch_rows,
                timeout=timeout,
            )
        )
        return AsyncItemStream(native, self._calls)

    async def info(self, name: str, *, timeout: float | None = None) -> dict[str, Any]:
        """What is stored under ``name`` (see :meth:`arrowbridge.Client.info`)."""
        return _describe(await self._info_raw(name, timeout))

    async def list(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every stored item, sorted by name (see :meth:`arrowbridge.Client.list`)."""
        infos = await self._calls.run(
            lambda done: self._native.submit_info(None, done, timeout=timeout)
        )
        return [_describe(info) for info in infos]

    async def _action(self, kind: str, body: bytes, timeout: float | None) -> bytes:
        result: bytes = await self._calls.run(
            lambda done: self._native.submit_action(kind, body, done, timeout=timeout)
        )
        return result

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes ``name`` from the server."""
        await self._action("delete", name.encode(), timeout)

    async def kernels(self, *, timeout: float | None = None) -> dict[str, str]:
        """The server's kernels: name -> signature."""
        result: dict[str, str] = json.loads(await self._action("list_kernels", b"", timeout))
        return result

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's status and the number of items it stores."""
        result: dict[str, Any] = json.loads(await self._action("health", b"", timeout))
        return result

    @staticmethod
    def stored(name: str) -> Stored:
        """A kernel argument naming an array already on the server."""
        return Stored(name)

    async def call(
        self, kernel: str, *arrays: Any, timeout: float | None = None, **params: Any
    ) -> Any:
        """Runs ``kernel`` on the server, as :meth:`arrowbridge.Client.call` does."""
        return await self._call(kernel, [_arg(a) for a in arrays], params, timeout)

    async def _call(
        self, kernel: str, args: list[tuple[str, Any]], params: dict[str, Any], timeout: Any
    ) -> Any:
        result = await self._calls.run(
            lambda done: self._native.submit_call(kernel, args, params, done, timeout=timeout)
        )
        return result[0] if len(result) == 1 else tuple(result)

    async def call_stream(
        self,
        kernel: str,
        source: Any,
        *others: Any,
        batch_rows: int | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[Any]:
        """Runs ``kernel`` on ``source`` batch by batch, as
        :meth:`arrowbridge.Client.call_stream` does: ``async for result in
        client.call_stream(...)``. ``source`` may also be an async iterable of arrays. Errors
        in the arguments are raised by the first ``__anext__``.

        >>> import asyncio, numpy as np, arrowbridge, arrowbridge.aio
        >>> async def main(location):
        ...     async with arrowbridge.aio.connect(location) as client:
        ...         await client.put("x", np.arange(6.0).reshape(3, 2))
        ...         sums = client.call_stream("sum", client.stored("x"), batch_rows=2)
        ...         return [r async for r in sums]
        >>> with arrowbridge.serve() as server:
        ...     asyncio.run(main(server.location))
        [array(15.)]
        """
        rest = [_arg(a) for a in others]
        _check_batch_rows(batch_rows)
        with _as_part_of(f"call_stream {kernel!r}"):
            described = await self._described(timeout)
        if isinstance(source, Stored):
            with _as_part_of(f"call_stream {kernel!r} on {source.name!r}"):
                infos = await self._calls.run(
                    lambda done: self._native.submit_info(source.name, done, timeout=timeout)
                )
            results = _Results(kernel, described, _rank(infos[0]), params)
            for rows, of, args in _stored_calls(source.name, infos[0], batch_rows, rest):
                for result in results.add(
                    rows, of, await self._call(kernel, args, params, timeout)
                ):
                    yield result
        else:
            results = None
            index = 0
            async for batch in _aiter_batches(kernel, source):
                array = _one_array(kernel, index, batch)
                if results is None:
                    results = _Results(kernel, described, np.ndim(array), params)
                args = [("array", array), *rest]
                outcome = await self._call(kernel, args, params, timeout)
                for result in results.add(len(array), f"batch {index}", outcome):
                    yield result
                index += 1
            if results is None:
                return
        for result in results.end():
            yield result

    async def _described(self, timeout: Any) -> dict[str, Any]:
        """The server's ``describe_kernels``, asked once."""
        described = getattr(self, "_kernel_descriptions", None)
        if described is None:
            body = await self._action("describe_kernels", b"", timeout)
            described = self._kernel_descriptions = json.loads(body)
        return described

    def close(self) -> None:
        """Closes the connection (calls under way are cancelled); idempotent."""
        self._closed = True
        self._calls.close()
        self._native.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<arrowbridge.aio.AsyncClient {self.location}>"


async def _async_batches(
    data: AsyncIterable[Any],
) -> AsyncIterator[tuple[str, list[str], list[Any]]]:
    async for batch in data:
        if not _no_ragged_rows(batch):
            yield _columns(batch)


async def _to_async(batches: Any) -> AsyncIterator[Any]:
    for batch in batches:
        yield batch


def _aiter_batches(kernel: str, source: Any) -> AsyncIterator[Any]:
    """The batches of a call_stream's source, async or not, as they come."""
    if isinstance(source, AsyncIterable):
        return aiter(source)
    return _to_async(_raw_batches(_stream_source(kernel, source)))


def connect(
    location: str,
    *,
    token: str | None = None,
    tls_root_certs: bytes | None = None,
    timeout: float | None = None,
    trusted: Sequence[str] = (),
) -> AsyncClient:
    """An :class:`AsyncClient` of the Flight server at ``location``, with the options of
    :func:`arrowbridge.connect` (``shm`` aside: it moves data over gRPC). The connection is
    made on first use. Use it with ``async with``, or :meth:`AsyncClient.close` it.
    """
    return AsyncClient(
        location, token=token, tls_root_certs=tls_root_certs, timeout=timeout, trusted=trusted
    )


__all__ = ["AsyncClient", "AsyncItemStream", "connect"]
